"""The Python API: one object over a store and the extractor that made it.

>>> import landmark
>>> lm = landmark.open("runs/store")                      # doctest: +SKIP
>>> lm.recognize(["photo.jpg"])[0].landmark_id            # doctest: +SKIP
>>> [m.id for m in lm.search(["photo.jpg"], k=5)[0].matches]   # doctest: +SKIP

The CLI and the HTTP service are thin layers over this module.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence, Union

import numpy as np
from PIL import Image

from .config import Config, check, load_config
from .data import ImageError, Manifest, load_image, read_dataset, read_photos
from .data.manifests import ImageRecord, check_split_ids, has_gldv2_split, is_gldv2, read_gldv2
from .features import ExtractionResult, Failure, GlobalExtractor
from .features.extract import REGIONS_EXTRA
from .features.engine import STORE_ENGINES_DIR
from .features.pipeline import (DESCRIPTOR_EXTRA, WHITENING_FILE, WhitenedExtractor, auto_learns_pca, base_extractor,
                                build_extractor, learn_store_whitening, zoom_views, zoomed)
from .features.whitening import WhiteningError
from .index import Store, StoreError
from .utils.progress import progress_bar
from .index.store import StoredFile, content_hash
from .index.local import LOCAL_DIR, LocalStore
from .features.local import LocalExtractor, LocalFeatures, extract_many
from .retrieval.rerank import Verifier, query_variants, rerank_shortlist
from .retrieval.category import StoreCategories, category_first
from .retrieval.search import ExpandedSearch, rank
from .retrieval.verification import draw_matches
from .recognition.calibrate import VAL_FRACTION, VAL_SEED
from .recognition.pipeline import Decision, Evidence, Recognizer, decide, neighbour_inliers

if TYPE_CHECKING:
    from .training.pseudo import ClusterConfig, StoreClusters

log = logging.getLogger(__name__)

Photo = Union[str, Path, Image.Image]


@dataclass(frozen=True)
class Match:
    id: str
    score: float
    landmark_id: int | None
    name: str | None = None
    path: str | None = None
    inliers: int | None = None        # verified local-feature inliers when the result was re-ranked


@dataclass
class SearchOutput:
    query: str
    matches: list[Match] = field(default_factory=list)
    error: str | None = None


@dataclass
class Recognition:
    query: str
    landmark_id: int | None
    name: str | None
    score: float                      # in [0, 1], ordered by grade then similarity (see Recognition in the README)
    votes: int = 0
    neighbours: list[Match] = field(default_factory=list)
    error: str | None = None
    grade: str | None = None          # A1B1 ... A4B2 (Baidu §3.3), "non-landmark" when a filter fired
    evidence: dict = field(default_factory=dict)   # classifier top-k, filter decisions, grade parts


@dataclass(frozen=True)
class Renamed:
    """A photo kept under a new id because the id it came with names another stored photo."""

    id: str          # the id it came with (its file name, or its CSV id), taken in the store
    new_id: str      # the id it is stored under: ``{id}~{first 8 hex digits of its SHA-256}``
    path: str
    reason: str      # why it counts as another photo than the stored one

    def __str__(self) -> str:
        return f"{self.path}: id {self.id!r} is taken by {self.reason}; kept as {self.new_id!r}"


@dataclass
class BuildReport:
    added: dict[str, int] = field(default_factory=dict)      # split -> photos added (renamed ones included)
    skipped: dict[str, int] = field(default_factory=dict)    # split -> photos already in the store (same content)
    failures: list[Failure] = field(default_factory=list)
    renamed: list[Renamed] = field(default_factory=list)     # added under a new id: theirs was taken


def default_splits(root: Path) -> tuple[str, ...]:
    """Which parts of a dataset make the database: GLDv2 train + index, or the whole folder."""
    return tuple(s for s in ("train", "index") if has_gldv2_split(root, s)) if is_gldv2(root) else ("db",)


def dataset_manifest(root: Path, split: str) -> Manifest:
    return read_gldv2(root, split) if is_gldv2(root) else read_dataset(root)


def _checkpoints(config: Config) -> list[str]:
    """The trained checkpoints of ``config``'s model and ensemble members, in order."""
    return [m.checkpoint for m in (config.model, *config.ensemble) if m.checkpoint]


class Landmarks:
    """A store plus the extractor whose signature it carries."""

    def __init__(self, store: Store, extractor: GlobalExtractor, config: Config | None = None):
        store.check_signature(extractor.signature)
        self.store = store
        self.extractor = extractor
        self.ray = None   # a landmark.distributed.RayConfig: database extraction then runs on Ray actors
        self.config = config or store.config          # local features / re-ranking settings
        self.local = LocalStore.open_if_exists(store.root / LOCAL_DIR)
        self._verifier: Verifier | None = None
        self._recognizer: Recognizer | None = None
        self._expanded: dict[tuple[str, ...] | None, ExpandedSearch] = {}
        self._categories: StoreCategories | None = None
        from .recognition.calibrate import store_recognition
        from .recognition.setup import attach_prior

        self.recognition_config = store_recognition(store)      # the store's (calibrated) thresholds

        self.groups = attach_prior(extractor, store.config.recognition)   # group probabilities in the same pass
        if store.config.model.checkpoint and isinstance(extractor, WhitenedExtractor):
            extractor.keep_descriptors = True       # the trained head reads the queries' un-whitened descriptors

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def open(cls, store_dir: str | Path, device: str | None = None, *, warm: bool = True) -> "Landmarks":
        """Open a store with the extractor it was built with; ``warm``: pay now what the first query
        would otherwise wait for (:meth:`warm`), so that it is as fast as the tenth."""
        store = Store.open(store_dir)
        lm = cls(store, build_extractor(store.config, device=device, store_root=store.root))
        if warm:
            lm.warm()
        return lm

    def warm(self) -> None:
        """Run one landscape and one portrait photo through the whole recognition (engine made or
        compiled, its kernels for those shapes, the recognizer's known non-landmarks, the query's
        local features and their verification), so that the first real query does not pay for them."""
        size = self.store.config.extract.image_size
        rng = np.random.default_rng(0)
        photos = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
                  for h, w in ((size * 3 // 4, size), (size, size * 3 // 4))]
        t0 = time.perf_counter()
        try:
            self.recognize(photos, progress=False)
        except Exception as exc:   # noqa: BLE001 - the first real query then pays, and reports what fails
            log.warning("warming up %s failed: %s", self.store.root, exc)
        log.info("warmed up in %.2f s", time.perf_counter() - t0)

    @classmethod
    def create(cls, store_dir: str | Path, config: Config | None = None, *, device: str | None = None,
               overwrite: bool = False, base=None) -> "Landmarks":
        """Open the store at ``store_dir`` if it was made with ``config``, else make a new one (``base``:
        the un-whitened extractor of ``config`` where one is at hand, see :func:`build_extractor`)."""
        config = check(config) if config is not None else load_config()
        root = Path(store_dir)
        extractor = build_extractor(config, device=device, store_root=root, base=base)
        if (root / "meta.sqlite").exists() and not overwrite:
            store = Store.open(root)
            try:
                store.check_signature(extractor.signature)
            except StoreError as exc:
                built, given = _checkpoints(store.config), _checkpoints(config)
                same = ("to use the store as it is, give its model again ("
                        + " ".join(f"--model {c}" for c in built) + "); "
                        if built and len(built) == 1 + len(store.config.ensemble) and built != given else "")
                store.close()
                raise StoreError(f"{exc}\n({same}to rebuild it with the new configuration: --overwrite, or "
                                 "overwrite=True in Python; or use another store directory)") from None
        else:
            store = Store.create(root, config, extractor.signature, overwrite=overwrite)
        return cls(store, extractor, config)

    @classmethod
    def build(cls, data: str | Path, store_dir: str | Path, config: Config | None = None, *,
              splits: Sequence[str] | None = None, device: str | None = None, overwrite: bool = False,
              progress: bool | None = None, ray=None) -> tuple["Landmarks", BuildReport]:
        """Build (or finish building) a store from a GLDv2 root or a folder of photos.

        ``ray`` (a :class:`landmark.distributed.RayConfig`) spreads the extraction over Ray actors.
        A GLDv2 root whose splits share photo ids is refused before any work (:func:`check_split_ids`);
        a resumed build skips the photos already stored (same file or same content, see :meth:`add_manifest`).
        """
        root = Path(data)
        config = check(config) if config is not None else load_config()
        if is_gldv2(root):     # before any extraction: a shared id would drop one of its two photos
            check_split_ids(root, splits or default_splits(root), queries=("test",))
        base = None      # the network the whitening was learned with serves the store too: built once
        if config.whitening.kind != "none":
            base = _learn_whitening(root, Path(store_dir), config, splits or default_splits(root), device=device,
                                    overwrite=overwrite, progress=progress)
        lm = cls.create(store_dir, config, device=device, overwrite=overwrite, base=base)
        lm.ray = ray
        report = BuildReport()
        for split in splits or default_splits(root):
            manifest = dataset_manifest(root, split)
            lm.store.set_label_names(manifest.label_names)
            lm.add_manifest(manifest, split=split, progress=progress, report=report)
        return lm, report

    # -- writes --------------------------------------------------------------------------------
    def add_manifest(self, manifest: Manifest, split: str | None = None, *, progress: bool | None = None,
                     report: BuildReport | None = None) -> BuildReport:
        """Extract and add the photos of ``manifest`` not yet in the store (resumable).

        A photo is already in the store when a stored photo has its id and its content (see
        :func:`_place`); one whose id names another stored photo is added under a new id,
        ``{id}~{first 8 hex digits of its SHA-256}``, listed in ``report.renamed`` and logged: no photo
        is dropped for its name."""
        report = report or BuildReport()
        split = split or manifest.name
        placed = _place(self.store, manifest.records)
        todo = placed.todo
        report.skipped[split] = len(placed.records) - len(todo)
        report.failures += placed.failures
        work = self.store.root / "_work" / f"extract-{split}"
        if self.ray is not None:
            from .distributed import extract_distributed

            result = extract_distributed(self.store.config, todo, self.ray, cache_dir=work, progress=progress,
                                         description=f"extract {split} (ray)", store_root=self.store.root,
                                         expect_prior_source=self.prior_source if self.groups else None)
        else:
            result = self.extractor.extract(todo, cache_dir=work, progress=progress, description=f"extract {split}")
        self.store_extracted(todo, result, split, contents=placed.contents)
        shutil.rmtree(work, ignore_errors=True)
        report.added[split] = len(result.ids)
        report.failures += result.failures
        done = set(result.ids)
        renamed = [r for r in placed.renamed if r.new_id in done]
        report.renamed += renamed
        if renamed:
            log.warning("%s: %d photo(s) kept under a new id, theirs being taken by another stored photo: %s%s",
                        split, len(renamed), "; ".join(map(str, renamed[:3])),
                        f"; and {len(renamed) - 3} more" if len(renamed) > 3 else "")
        if self.config.local.enabled:
            stored = set(self.store.get([r.id for r in placed.records]))
            report.failures += self.add_local([r for r in placed.records if r.id in stored], progress=progress,
                                              description=f"local features {split}")
        return report

    def store_extracted(self, records: Sequence[ImageRecord], result: ExtractionResult, split: str, *,
                        contents: Mapping[str, str] | None = None) -> None:
        """Add ``result`` (the global extraction of ``records``, with its object prior) to the store in
        one commit under ``split``, with each photo's content hash (from ``contents`` where already
        computed, else read from its file). Local features are :meth:`add_local`'s."""
        by_id = {r.id: r for r in records}
        known = contents or {}
        self.store.add(result.ids, result.vectors, paths=[str(Path(by_id[i].path).resolve()) for i in result.ids],
                       landmark_ids=[by_id[i].landmark_id for i in result.ids], split=split, sizes=result.sizes,
                       extras={k: v for k, v in result.extras.items() if k != DESCRIPTOR_EXTRA},
                       contents=[known.get(i) or _content_or_none(by_id[i].path) for i in result.ids])
        if result.extras and len(result.ids) and self.groups is not None:
            from .recognition.setup import priors_stale, record_groups

            if not priors_stale(self.store, self.groups, self.prior_source):   # else older photos' wait for a backfill
                record_groups(self.store, self.groups, self.prior_source)

    def add_local(self, records: Sequence[ImageRecord], *, progress: bool | None = None,
                  description: str = "local features", replace: bool = True) -> list[Failure]:
        """Extract and store local features of stored photos that lack them (resumable). Local
        features of other settings are replaced (all of them: the caller re-extracts every photo),
        unless ``replace`` is False: then that is a :class:`StoreError`."""
        extractor = self.local_extractor()
        if self.local is None or self.local.signature != json.loads(json.dumps(extractor.signature)):
            if not replace and self.local is not None:
                raise StoreError(f"the store's local features were extracted with other settings "
                                 f"({self.local.signature}); rebuild them with `landmark index build`")
            self.local = LocalStore.create(self.store.root / LOCAL_DIR, extractor.signature)
            self._verifier = None
        present = self.local.present([r.id for r in records])
        todo = [r for r in records if r.id not in present]
        return extract_many(extractor, todo, self.local.add, progress=progress, description=description)

    def local_extractor(self) -> LocalExtractor:
        return LocalExtractor(self.config.local)

    def add_photos(self, photos: Sequence[str | Path], *, landmark_id: int | None = None, split: str = "user",
                   name: str | None = None, progress: bool | None = None) -> BuildReport:
        """Add photos (ids: their file names, see :func:`~landmark.data.read_photos`) under ``split``.
        One whose id names another stored photo is kept under a new id (``report.renamed``); one
        already stored (same id, same content) is skipped (see :meth:`add_manifest`)."""
        manifest = read_photos(photos)
        manifest = Manifest(manifest.name, manifest.root,
                            [ImageRecord(r.id, r.path, landmark_id) for r in manifest.records])
        if landmark_id is not None and name:
            self.store.set_label_names({landmark_id: name})
        return self.add_manifest(manifest, split=split, progress=progress)

    def import_vectors(self, vectors: np.ndarray, ids: Sequence[str], *,
                       landmark_ids: Sequence[int | None] | None = None, paths: Sequence[str | None] | None = None,
                       split: str = "index", batch_size: int = 100_000, progress: bool | None = None) -> BuildReport:
        """Add descriptors computed elsewhere (a Spark or Ray job running the store's network) under
        ``split``, ``batch_size`` rows a commit: a killed import resumes, ids already stored are
        skipped (``report.skipped``). Rows are the network's unit-norm descriptors, or already in
        the store's space (``store.dim``); a store that whitens applies its whitening to the
        former. Imported photos have no local features and no object prior (``paths`` lets
        :meth:`ensure_extras` compute the latter later)."""
        n = len(ids)
        if vectors.ndim != 2 or len(vectors) != n:
            raise StoreError(f"expected {n} vector rows (one per id), got shape {vectors.shape}")
        if len(set(ids)) != n:
            dup = next(i for i, c in Counter(ids).items() if c > 1)
            raise StoreError(f"the ids repeat (e.g. {dup!r}): each imported row needs its own id")
        whiten = isinstance(self.extractor, WhitenedExtractor) and vectors.shape[1] == self.extractor.base.dim
        if vectors.shape[1] != self.store.dim and not whiten:
            raise StoreError(f"the store holds {self.store.dim}-d vectors; these are {vectors.shape[1]}-d")
        report = BuildReport(added={split: 0}, skipped={split: 0})
        with progress_bar(f"import {split}", total=n, enabled=progress) as bar:
            for lo in range(0, n, batch_size):
                part = slice(lo, min(n, lo + batch_size))
                keys = list(ids[part])
                rows = np.ascontiguousarray(vectors[part], dtype=np.float32)
                norms = np.linalg.norm(rows, axis=1)
                if not np.allclose(norms, 1.0, atol=1e-3):
                    bad = int(np.argmax(np.abs(norms - 1.0)))
                    raise StoreError(f"row {lo + bad} ({keys[bad]!r}) has norm {norms[bad]:.4f}: descriptors are "
                                     "L2-normalised rows")
                if whiten:
                    rows = self.extractor.whitening.apply(rows)
                present = self.store.get(keys)
                keep = [j for j, k in enumerate(keys) if k not in present]
                self.store.add([keys[j] for j in keep], rows[keep],
                               paths=[paths[lo + j] for j in keep] if paths is not None else None,
                               landmark_ids=[landmark_ids[lo + j] for j in keep] if landmark_ids is not None else None,
                               split=split)
                report.added[split] += len(keep)
                report.skipped[split] += len(keys) - len(keep)
                bar.advance(len(keys))
        return report

    def remove(self, ids: Sequence[str]) -> int:
        if self.local is not None:
            self.local.remove(ids)
        return self.store.remove(ids)

    # -- reads ---------------------------------------------------------------------------------
    def embed(self, photos: Sequence[Photo] | Manifest, *, progress: bool | None = None,
              cache_dir: str | Path | None = None, queries: bool = False) -> ExtractionResult:
        """Descriptors for photos given as paths, PIL images, or a manifest. ``queries``: also the
        extras recognition reads (object prior, and the regional and zoomed views of
        ``recognition.regions`` / ``recognition.zoom``)."""
        if isinstance(photos, Manifest):
            items = photos.records
        elif all(isinstance(p, Image.Image) for p in photos):
            ids = [f"image-{i}" for i in range(len(photos))]
            if not queries:
                return ExtractionResult(ids, self.extractor.extract_images(photos))
            vecs, extras = self.query_views_of_images(photos)
            return ExtractionResult(ids, vecs, extras=extras)
        else:
            items = [ImageRecord(str(p), Path(p)) for p in photos]
        if queries:
            return self.query_views(items, progress=progress, cache_dir=cache_dir)
        return self.extractor.extract(items, progress=progress, cache_dir=cache_dir)

    def query_views(self, items: Sequence[ImageRecord], *, progress: bool | None = None,
                    cache_dir: str | Path | None = None, description: str = "queries") -> ExtractionResult:
        """Descriptors of query photos on disk with what recognition reads: the probe outputs, and
        as ``extras[REGIONS_EXTRA]`` the views that also look for labelled neighbours: the regions
        (``recognition.regions``), then the global descriptor and regions of the photo read at
        ``recognition.zoom`` times the image size (a second forward pass, 4x the pixels at zoom 2)."""
        cfg = self.recognition_config
        res = self.extractor.extract(items, progress=progress, cache_dir=cache_dir, description=description,
                                     regions=cfg.regions)
        if cfg.zoom <= 1 or not res.ids:
            return res
        done = set(res.ids)
        z = zoomed(self.extractor, cfg.zoom).extract(
            [r for r in items if r.id in done], progress=progress, regions=cfg.regions,
            cache_dir=Path(cache_dir) / f"zoom-{cfg.zoom:g}" if cache_dir is not None else None,
            description=f"{description} (zoom {cfg.zoom:g})")
        views = zoom_views(res.ids, res.vectors, res.extras.get(REGIONS_EXTRA), z.ids, z.vectors, z.extras.get(REGIONS_EXTRA))
        return replace(res, extras=res.extras | {REGIONS_EXTRA: views})

    def query_views_of_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:meth:`query_views` of in-memory photos: their descriptors and extras."""
        cfg = self.recognition_config
        vecs, extras = self.extractor.extract_images_with_probe(images, cfg.regions)
        if cfg.zoom > 1 and len(images):
            zv, ze = zoomed(self.extractor, cfg.zoom).extract_images_with_probe(images, cfg.regions)
            ids = [str(i) for i in range(len(images))]
            extras = extras | {REGIONS_EXTRA: zoom_views(ids, vecs, extras.get(REGIONS_EXTRA), ids, zv, ze.get(REGIONS_EXTRA))}
        return vecs, extras

    def search(self, photos: Sequence[Photo], k: int | None = None, *, splits: Sequence[str] | None = None,
               progress: bool | None = None, rerank: bool | None = None,
               expand: bool | None = None, category: bool | None = None) -> list[SearchOutput]:
        """The ``k`` most similar stored photos for each query photo (errors reported per photo).

        With ``expand`` (default: :attr:`expands_by_default`), the database is augmented by DBA and the queries by alpha-QE
        (:class:`landmark.retrieval.ExpandedSearch`; the augmented database is held in memory).
        With ``rerank`` (default: on when the store has local features and ``rerank.enabled``), the
        global top ``rerank.top_k`` are verified with local features and re-scored (:mod:`landmark.retrieval.rerank`).
        With ``category`` (default: ``category.enabled``), a query confidently voted to a landmark gets
        the ranked photos of that landmark first (:mod:`landmark.retrieval.category`); each match keeps
        its score, so scores then fall within each group, not across the whole list.
        """
        if k is not None and k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = k or self.store.config.search.k
        names = self.store.label_names()
        ids, vectors, errors = self._embed_queries(photos, progress)
        rerank = self.can_rerank if rerank is None else rerank
        if rerank and self.local is None:
            raise StoreError(f"{self.store.root} has no local features to re-rank with "
                             "(rebuild it with local.enabled=true, or search with --no-rerank)")
        category = self.config.category.enabled if category is None else category
        # the category re-rank, like the spatial one, reorders the top `rerank.top_k`, so it may lift photos into the top k
        depth = max(k, self.config.rerank.top_k) if rerank or category else k
        expand = self.expands_by_default if expand is None else expand
        if not len(vectors):
            ranked = []
        elif expand:
            ranked = [(r.keys, r.scores) for r in self.expanded_search(splits).rank(vectors, depth)]
        else:
            ranked = [(r.keys, r.scores) for r in rank(self.store, vectors, depth, splits=splits)]
        out: dict[str, SearchOutput] = {q: SearchOutput(q, error=e) for q, e in errors.items()}
        by_name = dict(zip(self._query_names(photos), photos))
        q_labels = self.categories().vote(vectors) if category and len(ranked) else np.full(len(ranked), -1)
        for q, (keys, scores), q_label in zip(ids, ranked, q_labels):
            matches = self._matches(keys, scores, names)
            if rerank:
                try:
                    matches = self._rerank_matches(by_name[q], matches)
                except ImageError as exc:
                    out[q] = SearchOutput(q, error=exc.reason)
                    continue
            if q_label >= 0:
                order = category_first(matches, int(q_label), self.categories().labels([m.id for m in matches]))
                matches = [matches[i] for i in order]
            out[q] = SearchOutput(q, matches[:k])
        return [out[q] for q in self._query_names(photos)]

    @property
    def expands_by_default(self) -> bool:
        """Whether :meth:`search` applies DBA / alpha-QE unless told: configured, and the index is exact
        and holds at most ``expansion.search_max`` photos (DBA is quadratic in them)."""
        ec = self.config.expansion
        return bool((ec.dba or ec.qe) and self.store.config.index.kind == "flat" and len(self.store) <= ec.search_max)

    def expanded_search(self, splits: Sequence[str] | None = None) -> ExpandedSearch:
        """DBA / alpha-QE search over the stored photos of ``splits`` (made once per store generation)."""
        key = tuple(sorted(splits)) if splits else None
        cached = self._expanded.get(key)
        if cached is None or cached.generation != self.store.generation:
            cached = self._expanded[key] = ExpandedSearch(self.store, self.config.expansion, splits,
                                                          vote_k=self.recognition_config.k)
            log.info("augmented %d photos for DBA / alpha-QE", len(cached.keys))
        return cached

    def categories(self) -> StoreCategories:
        """Confident landmarks of stored photos and queries for the category re-rank (one per store generation)."""
        if self._categories is None or self._categories.generation != self.store.generation:
            self._categories = StoreCategories(self.store, self.config.category, k=self.recognition_config.k)
        return self._categories

    # -- local features --------------------------------------------------------------------------
    @property
    def can_rerank(self) -> bool:
        return bool(self.config.rerank.enabled and self.local is not None and len(self.local))

    @property
    def verifier(self) -> Verifier:
        if self.local is None:
            raise StoreError(f"{self.store.root} has no local features")
        if self._verifier is None:
            self._verifier = Verifier(self.local, self.config.rerank)
        return self._verifier

    def local_features(self, photo: Photo) -> LocalFeatures:
        """Local features of a photo (path or PIL image) made like the stored ones."""
        img = photo if isinstance(photo, Image.Image) else load_image(photo)
        return self.query_local_extractor().extract_image(img)

    def query_local_extractor(self) -> LocalExtractor:
        """The local-feature extractor for queries: the stored features' settings where there are some."""
        cfg = self.config.local
        if self.local is not None:   # match the stored features, whatever the current config says
            sig = self.local.signature
            cfg = replace(cfg, kind=sig["kind"], image_size=sig["image_size"], max_keypoints=sig["max_keypoints"],
                          model=sig.get("model", ""))
        return LocalExtractor(cfg)

    def _rerank_matches(self, photo: Photo, matches: list[Match]) -> list[Match]:
        img = photo if isinstance(photo, Image.Image) else load_image(photo)   # turned too, by rerank.rotations
        feats = query_variants(self.query_local_extractor(), img, self.config.rerank.rotations)
        ranked = rerank_shortlist(self.verifier, feats, [m.id for m in matches], [m.score for m in matches])
        by_id = {m.id: m for m in matches}
        return [replace(by_id[key], score=float(s), inliers=int(i) if i >= 0 else None)
                for key, s, i in zip(ranked.keys, ranked.scores, ranked.inliers)]

    def match_evidence(self, a: str | Photo, b: str, *, max_lines: int = 300) -> bytes | None:
        """PNG of the verified inlier matches between ``a`` (a stored key, a path or a PIL image) and stored ``b``.

        None when the store has no local features. Raises KeyError for an unknown stored key.
        """
        if self.local is None or not len(self.local):
            return None
        rows = self.store.get([b] + ([a] if isinstance(a, str) and not Path(a).is_file() else []))
        if b not in rows:
            raise KeyError(f"{b!r} is not in the store")
        fb = self.verifier.stored([b])[0]
        if fb is None:
            raise KeyError(f"{b!r} has no local features in the store")
        if isinstance(a, str) and a in rows:
            fa_got = self.verifier.stored([a])[0]
            if fa_got is None:
                raise KeyError(f"{a!r} has no local features in the store")
            fa, img_a = fa_got[0], load_image(rows[a].path)
        else:
            img_a = a if isinstance(a, Image.Image) else load_image(a)
            fa = self.query_local_extractor().extract_image(img_a)
        m, v = self.verifier.evidence(fa, b)     # the matches of the configured matcher that were verified
        return draw_matches(img_a, load_image(rows[b].path), fa, fb[0], m, v.mask, max_lines=max_lines)

    def recognize(self, photos: Sequence[Photo], *, progress: bool | None = None) -> list[Recognition]:
        """Landmark id, score in [0, 1], grade and evidence for each photo (the pipeline of Baidu §3)."""
        ids, vectors, errors, extras = self._embed_queries(photos, progress, with_extras=True)
        by_name = dict(zip(self._query_names(photos), photos))
        detections = self.detect([by_name[q] for q in ids], progress=progress)
        out: dict[str, Recognition] = {q: Recognition(q, None, None, 0.0, error=e) for q, e in errors.items()}
        recs = self.recognize_vectors(vectors, extras=extras, ids=ids, detections=detections,
                                      local=self.query_local_features(by_name), progress=progress)
        for q, rec in zip(ids, recs):
            rec.query = q
            out[q] = rec
        return [out[q] for q in self._query_names(photos)]

    @property
    def recognizer(self) -> Recognizer:
        """The recognition pipeline over this store (classifier from the store's trained model, if any)."""
        if self._recognizer is None:
            from .recognition.setup import make_recognizer

            self._recognizer = make_recognizer(self.store, self.recognition_config, self.groups, self.prior_source)
        return self._recognizer

    @property
    def prior_source(self) -> str:
        """Which classifier makes this store's object priors (``ImageNetPrior.source``; "own" without one)."""
        from .recognition.setup import prior_source

        return prior_source(self.extractor)

    def set_expansion_config(self, ec) -> None:
        """Use ``ec`` (a :class:`~landmark.config.ExpansionConfig`) for DBA / alpha-QE from now on."""
        self.config = replace(self.config, expansion=ec)
        self._expanded.clear()

    def set_category_config(self, cc) -> None:
        """Use ``cc`` (a :class:`~landmark.config.CategoryConfig`) for the category re-rank from now on."""
        self.config = replace(self.config, category=cc)
        self._categories = None

    def set_recognition_config(self, cfg) -> None:
        """Use ``cfg`` (a :class:`~landmark.config.RecognitionConfig`) for recognition from now on."""
        self.recognition_config = cfg
        self._recognizer = None

    def detect(self, photos: Sequence[Photo], *, progress: bool | None = None):
        """The configured object detector's decision on each photo (``recognition.detector``, the
        paper's rule), for :meth:`gather`; None when no detector is configured."""
        return self.recognizer.detect(photos, progress=progress)

    def gather(self, vectors: np.ndarray, *, extras: dict[str, np.ndarray] | None = None,
               ids: Sequence[str] | None = None, detections: Sequence | None = None) -> Evidence:
        """The recognition evidence of a batch of query descriptors (see :mod:`landmark.recognition.pipeline`);
        ``detections``: :meth:`detect` of the same photos, in the same order."""
        from .recognition.filters import PROBE_NAME

        ids = list(ids) if ids is not None else [str(i) for i in range(len(vectors))]
        extras = extras or {}
        return self.recognizer.gather(vectors, ids, extras.get(PROBE_NAME), detections,
                                      descriptors=extras.get(DESCRIPTOR_EXTRA), regions=extras.get(REGIONS_EXTRA))

    def verify_neighbours(self, ev: Evidence, features: Mapping[str, LocalFeatures] | LocalStore, *,
                          progress: bool | None = None) -> Evidence:
        """Fill ``ev.inliers`` (the geometric evidence :func:`~landmark.recognition.pipeline.decide` weighs
        against the non-landmark filters) from the queries' local features by query id: a mapping (e.g.
        :meth:`query_local_features`), or a :class:`LocalStore` of cached query features (``landmark
        evaluate``'s), read one query at a time. Each query is verified against its top-k labelled
        neighbours as search re-ranks (:attr:`verifier`); a query without features stays unverified (-1),
        and a store without local features leaves ``ev.inliers`` None. Returns ``ev``."""
        if not self.has_local_features:
            return ev
        lookup = (lambda q: features[q] if q in features else None) if isinstance(features, LocalStore) else features.get
        ev.inliers = neighbour_inliers(ev.keys, ev.labels.shape[1], (lookup(q) for q in ev.ids),
                                       self.verifier.inliers, progress=progress)
        return ev

    @property
    def has_local_features(self) -> bool:
        """Whether the store keeps local features to verify neighbours with (``rerank.enabled`` switches
        them for search; recognition verifies whenever they are there)."""
        return self.local is not None and len(self.local) > 0

    def query_local_features(self, photos: Mapping[str, Photo]) -> "QueryLocalFeatures":
        """The local features of query ``photos`` (id -> path or PIL image) for :meth:`verify_neighbours`,
        made like the stored ones (:meth:`local_features`) when read, one photo at a time."""
        return QueryLocalFeatures(self, photos)

    def recognize_vectors(self, vectors: np.ndarray, *, extras: dict[str, np.ndarray] | None = None,
                          ids: Sequence[str] | None = None, detections: Sequence | None = None,
                          local: Mapping[str, LocalFeatures] | LocalStore | None = None,
                          progress: bool | None = None) -> list[Recognition]:
        """Recognitions of query descriptors; ``extras`` are the extractor's probe outputs (object prior),
        ``detections`` the object detector's decisions (:meth:`detect`), ``local`` the queries' local
        features by id (:meth:`query_local_features` of their photos), which verify their neighbours
        (:meth:`verify_neighbours`)."""
        if not len(vectors):
            return []
        ev = self.gather(vectors, extras=extras, ids=ids, detections=detections)
        if local is not None:
            self.verify_neighbours(ev, local, progress=progress)
        return self.recognitions(ev, decide(ev, self.recognizer.cfg))

    def recognitions(self, ev: Evidence, decisions: Sequence[Decision]) -> list[Recognition]:
        names = self.store.label_names()
        rows = self.store.get(sorted({k for row in ev.keys for k in row if k is not None}))
        out = []
        for qi, d in enumerate(decisions):
            inliers = ev.inliers[qi] if ev.inliers is not None else np.full(len(ev.keys[qi]), -1)
            matches = [Match(key, float(s), int(lab) if lab >= 0 else None, names.get(int(lab)) if lab >= 0 else None,
                             rows[key].path if key in rows else None, int(inl) if inl >= 0 else None)
                       for key, s, lab, inl in zip(ev.keys[qi], ev.scores[qi], ev.labels[qi], inliers) if key is not None]
            out.append(Recognition(ev.ids[qi], d.landmark_id, names.get(d.landmark_id) if d.landmark_id is not None else None,
                                   d.score, ev.votes[qi].votes, matches, grade=d.grade, evidence=d.evidence))
        return out

    def calibrate(self, *, train_ids: Sequence[str] | None = None, val_fraction: float = VAL_FRACTION, seed: int = VAL_SEED,
                  landmark_loss: float = 0.02, expansion: bool = True, category: bool = True,
                  progress: bool | None = None) -> dict:
        """Refit the recognition thresholds (object prior, distractor filter, grades) and, if asked,
        the DBA / alpha-QE verification threshold (``expansion``) and the category re-rank
        (``category``) on validation splits of the labelled photos (of ``train_ids`` only, if given);
        they are kept in the store and used from now on. Never reads test data. Returns
        ``{"recognition": report, "expansion": report or None, "category": report or None}``."""
        from .evaluation.ablation import calibrate_category, calibrate_expansion, store_validation
        from .recognition.calibrate import calibrate_store

        self.ensure_extras(progress=progress)
        # fitted for the store's own query views (a store calibrated before them recognises without until now)
        own = self.store.config.recognition
        self.set_recognition_config(replace(self.recognition_config, regions=own.regions, zoom=own.zoom))
        recognition = calibrate_store(self, train_ids=train_ids, val_fraction=val_fraction, seed=seed,
                                      landmark_loss=landmark_loss, progress=progress)
        # one retrieval validation split (it depends on the known non-landmarks, so after recognition)
        validation = store_validation(self, train_ids=train_ids, seed=seed) if expansion or category else None
        fitted = calibrate_expansion(self, train_ids=train_ids, seed=seed, validation=validation) if expansion else None
        fitted_category = (calibrate_category(self, train_ids=train_ids, seed=seed, validation=validation)
                           if category else None)
        return {"recognition": recognition, "expansion": fitted, "category": fitted_category}

    def cluster(self, split: str = "index", cfg: ClusterConfig | None = None, *,
                landmarks_only: bool = True) -> StoreClusters:
        """Pseudo-landmarks for the photos of ``split``: clusters of their global descriptors
        (:func:`landmark.training.pseudo.cluster_store`), without the photos recognition knows are not
        landmarks (``landmarks_only``: object prior + distractors split), so that clusters are places."""
        from .training.pseudo import cluster_store

        exclude = self.recognizer.known_non_landmarks()[0] if landmarks_only else ()
        return cluster_store(self.store, split, cfg, exclude=exclude)

    def ensure_extras(self, *, progress: bool | None = None) -> int:
        """Compute the object prior of stored photos that lack it (stores built before it existed); returns how many."""
        from .recognition.setup import backfill_prior

        n = backfill_prior(self, progress=progress)
        if n:
            self._recognizer = None
        return n

    # -- helpers -------------------------------------------------------------------------------
    def _matches(self, keys: Sequence[str], scores: Sequence[float], names: dict[int, str]) -> list[Match]:
        rows = self.store.get(keys)
        return [Match(key, float(score), rows[key].landmark_id, names.get(rows[key].landmark_id)
                      if rows[key].landmark_id is not None else None, rows[key].path)
                for key, score in zip(keys, scores)]

    @staticmethod
    def _query_names(photos: Sequence[Photo]) -> list[str]:
        return [p if isinstance(p, str) else (str(p) if isinstance(p, Path) else f"image-{i}") for i, p in enumerate(photos)]

    def _embed_queries(self, photos: Sequence[Photo], progress: bool | None, with_extras: bool = False):
        names = self._query_names(photos)
        errors: dict[str, str] = {}
        paths = [(n, p) for n, p in zip(names, photos) if not isinstance(p, Image.Image)]
        images = [(n, p) for n, p in zip(names, photos) if isinstance(p, Image.Image)]
        ids, vecs, extras = [], [], []
        if paths:
            items = [ImageRecord(n, Path(p)) for n, p in paths]
            res = self.query_views(items, progress=progress) if with_extras else \
                self.extractor.extract(items, progress=progress, description="queries")   # only recognition reads the views
            ids += res.ids
            vecs.append(res.vectors)
            extras.append(res.extras)
            errors.update({f.id: f.reason for f in res.failures})
        if images:
            ids += [n for n, _ in images]
            v, e = self.query_views_of_images([im for _, im in images]) if with_extras else \
                (self.extractor.extract_images([im for _, im in images]), {})
            vecs.append(v)
            extras.append(e)
        vectors = np.concatenate(vecs) if vecs else np.zeros((0, self.extractor.dim), np.float32)
        if not with_extras:
            return ids, vectors, errors
        parts = [(len(v), e) for v, e in zip(vecs, extras) if len(v)]     # a part whose photos all failed adds nothing
        merged = {name: np.concatenate([e[name] for _, e in parts]) for name in (parts[0][1] if parts else {})
                  if all(name in e and len(e[name]) == n for n, e in parts)}
        return ids, vectors, errors, merged


class QueryLocalFeatures(Mapping[str, LocalFeatures]):
    """Query photos' local features by id, extracted when read and not kept (a batch of thousands never
    holds them all), as :meth:`Landmarks.local_features` makes them for search's re-rank. A photo that
    cannot be read again is missing (``get`` gives None: its neighbours stay unverified)."""

    def __init__(self, lm: Landmarks, photos: Mapping[str, Photo]):
        self.lm, self.photos = lm, photos

    def __getitem__(self, query: str) -> LocalFeatures:
        photo = self.photos[query]
        try:
            return self.lm.local_features(photo)
        except ImageError as exc:
            log.warning("no local features for %s, its neighbours stay unverified: %s", query, exc)
            raise KeyError(query) from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self.photos)

    def __len__(self) -> int:
        return len(self.photos)


@dataclass
class _Placement:
    """Where the photos of a manifest go in a store (:func:`_place`)."""

    records: list[ImageRecord] = field(default_factory=list)   # each photo under its store id, skipped ones too
    todo: list[ImageRecord] = field(default_factory=list)      # those to extract and add
    renamed: list[Renamed] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)      # unreadable photos whose id is taken
    contents: dict[str, str] = field(default_factory=dict)     # store id -> content hash already computed


def _place(store: Store, records: Sequence[ImageRecord]) -> _Placement:
    """Sort photos into new ones, ones already stored, and ones whose id names another stored photo.

    A photo is already stored when the stored photo of its id has its content: it is the same file,
    unmodified since it was added (no file is read: a resumed build costs a ``stat`` per photo), or
    its bytes have the same SHA-256. Otherwise it is kept under ``{id}~{first 8 hex digits of its
    SHA-256}`` (16, then 64 digits if that is taken by yet another photo), so that adding it again
    finds it there. A photo stored before content hashes were kept gets its hash from its file, which
    is then recorded; when that file is gone the two cannot be compared and the new photo gets a new id.
    """
    stored = store.stored_files([r.id for r in records])
    out = _Placement()
    taken = {r.id for r in records}
    backfill: dict[str, str] = {}
    for r in records:
        old = stored.get(r.id)
        if old is None:
            out.records.append(r)
            out.todo.append(r)
            continue
        if _same_file(old, r.path):
            out.records.append(r)
            continue
        try:
            digest = content_hash(r.path)
        except OSError as exc:
            out.failures.append(Failure(r.id, str(r.path), f"cannot read it to compare with the stored photo "
                                                           f"{r.id!r}: {exc.strerror or exc}"))
            continue
        known = old.content
        if known is None and old.path is not None:     # stored before content hashes were kept
            known = digest if old.path == str(Path(r.path).resolve()) else _content_or_none(old.path)
            if known is not None:
                backfill[r.id] = known
        if known == digest:
            out.records.append(r)
            continue
        new_id, present = _new_id(store, r.id, digest, taken)
        record = ImageRecord(new_id, r.path, r.landmark_id)
        out.records.append(record)
        if present:            # added before under its new id
            continue
        taken.add(new_id)
        out.todo.append(record)
        out.contents[new_id] = digest
        out.renamed.append(Renamed(r.id, new_id, str(r.path), f"another photo ({old.path})" if known is not None else
                                   f"a photo stored before content hashes were kept, whose file {old.path} is gone "
                                   "(so the two cannot be compared)"))
    store.set_contents(backfill)
    return out


def _new_id(store: Store, image_id: str, digest: str, taken: set[str]) -> tuple[str, bool]:
    """The id of a photo of content ``digest`` whose own ``image_id`` is taken, and whether a photo of that
    content is already stored under it: ``{image_id}~{digest prefix}``, the prefix longer while the
    id names another photo or one of ``taken`` (ids of the same batch)."""
    for n in (8, 16, len(digest)):
        candidate = f"{image_id}~{digest[:n]}"
        if candidate in taken:
            continue
        found = store.stored_files([candidate]).get(candidate)
        if found is None:
            return candidate, False
        if found.content == digest:
            return candidate, True
    raise StoreError(f"no free id for a photo of id {image_id!r} (SHA-256 {digest}): {image_id}~{digest} names "
                     "another stored photo")


def _same_file(stored: StoredFile, path: str | Path) -> bool:
    """Whether ``path`` is the file ``stored`` was read from, not modified since it was added."""
    if stored.path is None:
        return False
    try:
        resolved = Path(path).resolve()
        return str(resolved) == stored.path and resolved.stat().st_mtime <= stored.added_at
    except OSError:
        return False


def _content_or_none(path: str | Path) -> str | None:
    """:func:`content_hash` of ``path``, None when it cannot be read (then it is compared as unknown)."""
    try:
        return content_hash(path)
    except OSError:
        return None


def _learn_whitening(root: Path, store_dir: Path, config: Config, splits: Sequence[str], *, device: str | None,
                     overwrite: bool, progress: bool | None):
    """Learn the store's whitening before the store is made: PCA on its ``whitening.learn_on`` split
    (the index, unlabelled), or the learned whitening on that split's labelled photos less those kept
    for validation (:func:`~landmark.recognition.calibrate.validation_holdout`). Returns the
    un-whitened extractor it learned with (None where nothing was learned)."""
    wc = config.whitening
    if (store_dir / "meta.sqlite").exists() and not overwrite and ((store_dir / WHITENING_FILE).exists()
                                                                    or wc.kind == "auto"):
        return None   # an existing store keeps its whitening (auto: or its lack of one); create() checks the signature
    learn = [s for s in splits if wc.learn_on in (s, "all")] or list(splits)
    records = [r for s in learn for r in dataset_manifest(root, s).records]
    if wc.kind == "auto" and not auto_learns_pca(config, len(records)):
        log.info("whitening.kind=auto: %d photos in %s are too few to learn %d PCA components; the store keeps the "
                 "network's descriptors", len(records), " + ".join(learn), wc.dim)
        return None
    held: set[str] = set()
    if wc.kind == "learned":
        from .recognition.calibrate import validation_holdout

        labelled = [r for r in records if r.landmark_id is not None]
        if not labelled:
            named = "" if wc.learn_on in (*splits, "all") else f" (whitening.learn_on={wc.learn_on} is not built here)"
            raise WhiteningError(f"whitening.kind=learned is learned from labelled photos, and {root} has none in "
                                 f"{' + '.join(learn)}{named}: learn it on a labelled split (train of a GLDv2 root), "
                                 "or use whitening.kind=pca")
        held = validation_holdout(config, labelled)
    base = base_extractor(config, device=device, engine_dir=store_dir / STORE_ENGINES_DIR)
    from .recognition.setup import attach_prior

    attach_prior(base, config.recognition)   # as the store's extractor will: it then reuses these photos' cache
    if wc.kind == "learned" and wc.shrinkage <= 0:   # rank of the within-landmark covariance <= photos - landmarks
        rest = [r for r in labelled if r.id not in held]
        if len(rest) - len({r.landmark_id for r in rest}) < base.dim:
            raise WhiteningError(f"{len(rest)} labelled photos of {len({r.landmark_id for r in rest})} landmarks leave "
                                 f"the within-landmark covariance of {base.dim}-d descriptors singular: set "
                                 "whitening.shrinkage > 0 (0.2 in lite2-gem-lw)")
    # the store's extraction of that split reads the same cache (its extractor is this one, whitened), then removes it
    cache = store_dir / "_work" / f"extract-{learn[0]}" if len(learn) == 1 else None
    learn_store_whitening(config, base, records, store_dir, cache_dir=cache, progress=progress, held_out=sorted(held))
    return base


def open(store_dir: str | Path, device: str | None = None, *, warm: bool = True) -> Landmarks:  # noqa: A001
    """Open an existing store with the extractor it was built with (see :meth:`Landmarks.open`)."""
    return Landmarks.open(store_dir, device=device, warm=warm)


def load_photo(source) -> Image.Image:
    """Decode one photo safely (EXIF orientation, any mode to RGB); raises :class:`ImageError`."""
    return load_image(source)


__all__ = ["BuildReport", "ImageError", "Landmarks", "Match", "QueryLocalFeatures", "Recognition", "Renamed", "SearchOutput",
           "open", "load_photo"]
