"""Searching a store: the nearest stored photos of query photos, with DBA / alpha-QE, the spatial
re-rank of the shortlist and the category re-rank, and the picture of a match's verified inliers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import ImageError, load_image
from ..index import StoreError
from ..index.augmented import AugmentedVectors
from ..retrieval.augment import IndexedExpansion, calibrated, dba_settings
from ..retrieval.category import StoreCategories, category_first
from ..retrieval.config import CategoryConfig, ExpansionConfig
from ..retrieval.pairs import stored_pair_inliers
from ..retrieval.rerank import query_variants, rerank_shortlist
from ..retrieval.search import ExpandedSearch, rank
from ..retrieval.verification import draw_matches
from .context import StoreContext
from .embedding import Embedding
from .results import Match, Photo, SearchOutput, query_names

log = logging.getLogger(__name__)


class Searching:
    """Retrieval over the store of ``ctx``: :meth:`search` and what it is made of."""

    def __init__(self, ctx: StoreContext, embedding: Embedding):
        self.ctx, self.embedding = ctx, embedding
        self._expanded: dict[tuple[str, ...] | None, ExpandedSearch | IndexedExpansion] = {}
        self._categories: StoreCategories | None = None
        self._current: tuple[tuple[int, int, str], bool] | None = None  # augmented_current, per generation

    def search(
        self,
        photos: Sequence[Photo],
        k: int | None = None,
        *,
        splits: Sequence[str] | None = None,
        progress: bool | None = None,
        rerank: bool | None = None,
        expand: bool | None = None,
        category: bool | None = None,
    ) -> list[SearchOutput]:
        """The ``k`` most similar stored photos for each query photo (errors reported per photo).

        With ``expand`` (default: :attr:`expands_by_default`), the database is augmented by DBA and the
        queries by alpha-QE (:meth:`expanded_search`: in memory on an exact store of at most
        ``expansion.search_max`` photos, else through the index and the augmented vectors that
        ``landmark index expand`` keeps in the store).
        With ``rerank`` (default: on when the store has local features and ``rerank.enabled``), the
        global top ``rerank.top_k`` are verified with local features and re-scored (:mod:`landmark.retrieval.rerank`).
        With ``category`` (default: ``category.enabled``), a query confidently voted to a landmark gets
        the ranked photos of that landmark first (:mod:`landmark.retrieval.category`); each match keeps
        its score, so scores then fall within each group, not across the whole list.
        """
        if k is not None and k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = k or self.ctx.store.config.search.k
        names = self.ctx.store.label_names()
        ids, vectors, errors = self.embedding.queries(photos, progress)[:3]
        rerank = self.can_rerank if rerank is None else rerank
        if rerank and self.ctx.local is None:
            raise StoreError(
                f"{self.ctx.store.root} has no local features to re-rank with "
                "(rebuild it with local.enabled=true, or search with --no-rerank)"
            )
        category = self.ctx.config.category.enabled if category is None else category
        # the category re-rank, like the spatial one, reorders the top `rerank.top_k`, so it may lift photos
        # into the top k
        depth = max(k, self.ctx.config.rerank.top_k) if rerank or category else k
        expand = self.expands_by_default if expand is None else expand
        if not len(vectors):
            ranked = []
        elif expand:
            ranked = [(r.keys, r.scores) for r in self.expanded_search(splits).rank(vectors, depth)]
        else:
            ranked = [(r.keys, r.scores) for r in rank(self.ctx.store, vectors, depth, splits=splits)]
        out: dict[str, SearchOutput] = {q: SearchOutput(q, error=e) for q, e in errors.items()}
        by_name = dict(zip(query_names(photos), photos))
        q_labels = self.categories().vote(vectors) if category and len(ranked) else np.full(len(ranked), -1)
        for q, (keys, scores), q_label in zip(ids, ranked, q_labels):
            matches = self.matches(keys, scores, names)
            if rerank:
                try:
                    matches = self.rerank_matches(by_name[q], matches)
                except ImageError as exc:
                    out[q] = SearchOutput(q, error=exc.reason)
                    continue
            if q_label >= 0:
                order = category_first(matches, int(q_label), self.categories().labels([m.id for m in matches]))
                matches = [matches[i] for i in order]
            out[q] = SearchOutput(q, matches[:k])
        return [out[q] for q in query_names(photos)]

    @property
    def expands_by_default(self) -> bool:
        """Whether :meth:`search` applies DBA / alpha-QE unless told. Configured, and: on a store made
        exact (``index.kind=flat``) of at most ``expansion.search_max`` photos, always (DBA runs in
        memory); on others, where the store's calibration validated the expansion in force
        (``landmark calibrate``) and, with DBA, its augmented vectors are current for it
        (``landmark index expand``): DBA through the index, validated as it is, or no expansion."""
        ec = self.ctx.config.expansion
        store = self.ctx.store
        if not (ec.dba or ec.qe):
            return False
        if store.config.index.kind == "flat" and len(store) <= ec.search_max:
            return True
        return calibrated(store, ec) and (not ec.dba or self.augmented_current)

    @property
    def in_memory(self) -> bool:
        """Whether :meth:`expanded_search` augments in memory (exact DBA, all-pairs): an exact index of
        at most ``expansion.search_max`` photos; else it goes through the index."""
        return not self.ctx.store.compressed and len(self.ctx.store) <= self.ctx.config.expansion.search_max

    @property
    def augmented_current(self) -> bool:
        """Whether the store's augmented vectors hold every stored photo, made with the expansion in force."""
        store = self.ctx.store
        aug = AugmentedVectors(store)
        settings = dba_settings(
            self.ctx.config.expansion, self.ctx.recognition_config.k, self.ctx.config.rerank.verified_inliers
        )
        key = (store.generation, aug.generation, repr(settings))
        if self._current is None or self._current[0] != key:
            self._current = (key, aug.current(settings))
        return self._current[1]

    def expanded_search(self, splits: Sequence[str] | None = None) -> ExpandedSearch | IndexedExpansion:
        """DBA / alpha-QE search over the stored photos of ``splits``, made once per store generation: in
        memory where :attr:`in_memory`, else through the index (:class:`landmark.retrieval.augment.IndexedExpansion`:
        the augmented vectors where current, else alpha-QE alone)."""
        key = tuple(sorted(splits)) if splits else None
        cached = self._expanded.get(key)
        store, ec, vote_k = self.ctx.store, self.ctx.config.expansion, self.ctx.recognition_config.k
        if (
            cached is None
            or cached.generation != store.generation
            or (isinstance(cached, IndexedExpansion) and cached.aug_generation != cached.aug.generation)
        ):
            if self.in_memory:
                cached = self._expanded[key] = ExpandedSearch(
                    store,
                    ec,
                    splits,
                    vote_k=vote_k,
                    pair_inliers=self.stored_pair_inliers if self.ctx.has_local_features else None,
                    min_inliers=self.ctx.config.rerank.verified_inliers,
                )
                log.info("augmented %d photos for DBA / alpha-QE", len(cached.keys))
            else:
                cached = self._expanded[key] = IndexedExpansion(
                    store, ec, splits, vote_k=vote_k, min_inliers=self.ctx.config.rerank.verified_inliers
                )
        return cached

    def stored_pair_inliers(self, keys: Sequence[str], neighbours: Sequence[Sequence[str]]) -> np.ndarray:
        """Local-feature inliers of stored photos with their stored neighbours (kept in the store once verified)."""
        return stored_pair_inliers(self.ctx.verifier, keys, neighbours)

    def categories(self) -> StoreCategories:
        """Confident landmarks of stored photos and queries for the category re-rank (one per store generation)."""
        if self._categories is None or self._categories.generation != self.ctx.store.generation:
            self._categories = StoreCategories(
                self.ctx.store, self.ctx.config.category, k=self.ctx.recognition_config.k
            )
        return self._categories

    @property
    def can_rerank(self) -> bool:
        """Whether :meth:`search` re-ranks unless told: ``rerank.enabled`` and the store has local features."""
        return bool(self.ctx.config.rerank.enabled and self.ctx.has_local_features)

    def rerank_matches(self, photo: Photo, matches: list[Match]) -> list[Match]:
        img = photo if isinstance(photo, Image.Image) else load_image(photo)  # turned too, by rerank.rotations
        feats = query_variants(self.ctx.query_local_extractor(), img, self.ctx.config.rerank.rotations)
        ranked = rerank_shortlist(self.ctx.verifier, feats, [m.id for m in matches], [m.score for m in matches])
        by_id = {m.id: m for m in matches}
        return [
            replace(by_id[key], score=float(s), inliers=int(i) if i >= 0 else None)
            for key, s, i in zip(ranked.keys, ranked.scores, ranked.inliers)
        ]

    def match_evidence(self, a: str | Photo, b: str, *, max_lines: int = 300) -> bytes | None:
        """PNG of the verified inlier matches between ``a`` (a stored key, a path or a PIL image) and stored ``b``.

        None when the store has no local features. Raises KeyError for an unknown stored key.
        """
        if self.ctx.local is None or not len(self.ctx.local):
            return None
        rows = self.ctx.store.get([b] + ([a] if isinstance(a, str) and not Path(a).is_file() else []))
        if b not in rows:
            raise KeyError(f"{b!r} is not in the store")
        fb = self.ctx.verifier.stored([b])[0]
        if fb is None:
            raise KeyError(f"{b!r} has no local features in the store")
        if isinstance(a, str) and a in rows:
            fa_got = self.ctx.verifier.stored([a])[0]
            if fa_got is None:
                raise KeyError(f"{a!r} has no local features in the store")
            path_a = rows[a].path
            assert path_a is not None  # its local features were read from its file
            fa, img_a = fa_got[0], load_image(path_a)
        else:
            img_a = a if isinstance(a, Image.Image) else load_image(a)
            fa = self.ctx.query_local_extractor().extract_image(img_a)
        m, v = self.ctx.verifier.evidence(fa, b)  # the matches of the configured matcher that were verified
        path_b = rows[b].path
        assert path_b is not None  # its local features were read from its file
        return draw_matches(img_a, load_image(path_b), fa, fb[0], m, v.mask, max_lines=max_lines)

    def set_expansion_config(self, ec: ExpansionConfig) -> None:
        """Use ``ec`` for DBA / alpha-QE from now on."""
        self.ctx.config = replace(self.ctx.config, expansion=ec)
        self._expanded.clear()

    def set_category_config(self, cc: CategoryConfig) -> None:
        """Use ``cc`` for the category re-rank from now on."""
        self.ctx.config = replace(self.ctx.config, category=cc)
        self._categories = None

    def matches(self, keys: Sequence[str], scores: Sequence[float], names: dict[int, str]) -> list[Match]:
        rows = self.ctx.store.get(keys)
        out = []
        for key, score in zip(keys, scores):
            lab = rows[key].landmark_id
            out.append(Match(key, float(score), lab, names.get(lab) if lab is not None else None, rows[key].path))
        return out
