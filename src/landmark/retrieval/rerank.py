"""Spatial-verification re-ranking of the global shortlist (Baidu GLR19 §2.3), and verified-neighbour matrices.

For each query, the global top-K stored photos are matched with the query's local features
(``rerank.matcher``: mutual NN :mod:`.matching`, or LightGlue / LighterGlue :mod:`.glue`, batched over
the shortlist) and verified (:mod:`.verification`); the new score of a shortlisted photo is

    score = global similarity + weight * min(inliers, saturation) / saturation    if inliers >= min_inliers
    score = global similarity                                                     otherwise

so verified photos move up in order of their evidence, and unverified ones keep their global order
(``weight`` >= 2 puts every verified photo above every unverified one; small weights only break
near-ties). The knobs live in :class:`landmark.config.RerankConfig`.

:func:`verified_matrix` gives, for each query's top-N neighbours, the inlier counts from which
"verified same landmark" is ``>= min_inliers`` (for verification-aware DBA / alpha-QE).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from PIL import Image

from ..data.images import ImageError, load_image
from ..features.local import LocalExtractor, LocalFeatures, extract_many
from ..index.local import LocalStore
from ..utils.device import resolve_device
from ..utils.progress import progress_bar
from .config import RerankConfig
from .glue import GlueInput, GlueMatcher, check_matcher
from .inverted import LocalInvertedIndex, merge_shortlists
from .matching import Prepared, match_many, prepare
from .verification import Verification, verify


@contextmanager
def _single_threaded_ops() -> Iterator[None]:
    """torch and OpenCV ops single-threaded inside (parallelism comes from verifying pairs concurrently)."""
    t, c = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(t)
        cv2.setNumThreads(c)


@dataclass
class Timings:
    """Where verification time goes (seconds)."""

    io: float = 0.0  # reading stored features and preparing descriptors
    matching: float = 0.0  # tentative matching (mutual NN + ratio test, or the learned matcher)
    ransac: float = 0.0  # MAGSAC++
    pairs: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"io_s": self.io, "matching_s": self.matching, "ransac_s": self.ransac, "pairs": self.pairs}


class Verifier:
    """Verifies query features against stored photos; prepared stored descriptors are cached in memory."""

    def __init__(
        self,
        local: LocalStore,
        cfg: RerankConfig | None = None,
        *,
        cache_bytes: int = 2 << 30,
        threads: int | None = None,
    ):
        self.local = local
        self.cfg = cfg or RerankConfig()
        self.kind = str(local.signature.get("kind", "rootsift"))
        check_matcher(self.cfg.matcher, self.kind)
        self._glue: GlueMatcher | None = None
        self._cache: OrderedDict[str, tuple[LocalFeatures, Prepared | GlueInput]] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._used = 0
        self.timings = Timings()
        self.threads = int(threads or min(2, os.cpu_count() or 1))
        self._executor: ThreadPoolExecutor | None = None

    @property
    def glue(self) -> GlueMatcher | None:
        """The learned matcher (``rerank.matcher`` lightglue / lighterglue), loaded on first use; None for mnn."""
        if self._glue is None and self.cfg.matcher != "mnn":
            self._glue = GlueMatcher(
                self.cfg.matcher,
                self.kind,
                resolve_device(self.cfg.device),
                min_confidence=self.cfg.min_confidence,
                batch_size=self.cfg.batch_size,
            )
        return self._glue

    def prepare_query(self, feats: LocalFeatures) -> Prepared | GlueInput:
        return prepare(feats.descriptors, self.kind) if self.glue is None else self.glue.prepare(feats)

    def stored(self, keys: Sequence[str]) -> list[tuple[LocalFeatures, Prepared | GlueInput] | None]:
        """Features and prepared descriptors of stored photos (None where a key has none)."""
        t0 = time.perf_counter()
        missing = [k for k in dict.fromkeys(keys) if k not in self._cache]
        if missing:
            for k, f in self.local.get(missing).items():
                f = LocalFeatures(np.asarray(f.keypoints), np.asarray(f.descriptors), f.scale, f.width, f.height)
                p = self.prepare_query(f)
                self._cache[k] = (f, p)
                self._used += _nbytes(p) + f.keypoints.nbytes
            while self._used > self._cache_bytes and len(self._cache) > 1:
                _, (f, p) = self._cache.popitem(last=False)
                self._used -= _nbytes(p) + f.keypoints.nbytes
        out = []
        for k in keys:
            hit = self._cache.get(k)
            if hit is not None:
                self._cache.move_to_end(k)
            out.append(hit)
        self.timings.io += time.perf_counter() - t0
        return out

    def verify(
        self, query: LocalFeatures, keys: Sequence[str], prepared: Prepared | GlueInput | None = None
    ) -> list[Verification]:
        """One :class:`Verification` per stored key (no inliers where a key has no local features).

        Pairs are spread over ``threads`` Python threads, each running its matrix product and
        RANSAC single-threaded (both release the GIL): on small per-pair products this beats
        multi-threaded BLAS, which also collapses when the CPU is shared. A learned matcher first
        matches the whole shortlist in batches (:meth:`GlueMatcher.match_many`, torch's threads);
        only MAGSAC++ is spread over the threads then.
        """
        cfg = self.cfg
        t0 = time.perf_counter()
        qp = prepared if prepared is not None else self.prepare_query(query)
        self.timings.io += time.perf_counter() - t0
        stored = self.stored(keys)
        qxy = query.xy
        out = [Verification() for _ in keys]
        spent = np.zeros((len(keys), 2))
        glued: list = []
        t_glue = 0.0
        glue = self.glue
        if glue is not None:
            t_g = time.perf_counter()
            cands = [_glue_input(s[1]) if s is not None else None for s in stored]
            glued = [g.matches for g in glue.match_many(_glue_input(qp), cands)]
            t_glue = time.perf_counter() - t_g

        def one(i: int) -> None:
            s = stored[i]
            assert s is not None  # only the present keys are verified
            t_a = time.perf_counter()
            m = (
                glued[i]
                if glued
                else match_many(_prepared(qp), [_prepared(s[1])], ratio=cfg.ratio, mutual=cfg.mutual)[0]
            )
            t_b = time.perf_counter()
            out[i] = verify(
                qxy,
                s[0].xy,
                m,
                model=cfg.model,
                threshold=cfg.threshold,
                max_iters=cfg.max_iters,
                min_inliers=cfg.min_inliers,
            )
            spent[i] = (t_b - t_a, time.perf_counter() - t_b)

        present = [i for i, s in enumerate(stored) if s is not None]
        t0 = time.perf_counter()
        with _single_threaded_ops():
            if self.threads > 1 and len(present) > 1:
                list(self._pool().map(one, present))
            else:
                for i in present:
                    one(i)
        wall = time.perf_counter() - t0
        total = spent.sum(axis=0)  # thread time, scaled to the wall time it took
        share = total / total.sum() if total.sum() > 0 else np.array([0.5, 0.5])
        self.timings.matching += float(wall * share[0]) + t_glue
        self.timings.ransac += float(wall * share[1])
        self.timings.pairs += len(keys)
        return out

    def evidence(self, query: LocalFeatures, key: str) -> tuple[np.ndarray, Verification]:
        """The tentative matches of ``query`` with stored ``key`` (the configured matcher) and their verification
        (``mask``: the verified ones), for the evidence picture; a KeyError when ``key`` has no local features."""
        got = self.stored([key])[0]
        if got is None:
            raise KeyError(f"{key!r} has no local features in the store")
        qp, cfg, glue = self.prepare_query(query), self.cfg, self.glue
        m = (
            glue.match_many(_glue_input(qp), [_glue_input(got[1])])[0].matches
            if glue is not None
            else match_many(_prepared(qp), [_prepared(got[1])], ratio=cfg.ratio, mutual=cfg.mutual)[0]
        )
        return m, verify(
            query.xy,
            got[0].xy,
            m,
            model=cfg.model,
            threshold=cfg.threshold,
            max_iters=cfg.max_iters,
            min_inliers=cfg.min_inliers,
        )

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="verify")
        return self._executor

    def inliers(self, query: LocalFeatures | Sequence[LocalFeatures], keys: Sequence[str]) -> np.ndarray:
        """Verified inliers of each key; a query given as several variants (:func:`query_variants`: the photo
        turned by ``rerank.rotations``) that verifies no key upright counts the best variant for each key."""
        variants = [query] if isinstance(query, LocalFeatures) else list(query)
        if not variants:
            return np.zeros(len(keys), np.int32)
        best = np.array([v.inliers for v in self.verify(variants[0], keys)], np.int32)
        if len(variants) > 1 and (not len(best) or best.max() < self.cfg.min_inliers):  # nothing verified upright:
            for q in variants[1:]:  # the photo may be sideways
                best = np.maximum(best, [v.inliers for v in self.verify(q, keys)])
        return best


def _glue_input(p: Prepared | GlueInput) -> GlueInput:
    """``p`` prepared for the learned matcher (a verifier with one prepares every photo so)."""
    assert isinstance(p, GlueInput), "prepared for mutual NN, matched by a learned matcher"
    return p


def _prepared(p: Prepared | GlueInput) -> Prepared:
    """``p`` prepared for mutual NN (a verifier without a learned matcher prepares every photo so)."""
    assert isinstance(p, Prepared), "prepared for a learned matcher, matched by mutual NN"
    return p


def _nbytes(p: Prepared | GlueInput) -> int:
    return p.mat.numel() if isinstance(p, Prepared) else p.descriptors.numel() * 4 + p.xy.numel() * 4


def rotated(image: Image.Image, degrees: int) -> Image.Image:
    """``image`` turned counter-clockwise by a multiple of 90 degrees (lossless)."""
    turn = {0: None, 90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    if degrees % 360 not in turn:
        raise ValueError(f"rerank.rotations: multiples of 90 degrees only, got {degrees}")
    op = turn[degrees % 360]
    return image if op is None else image.transpose(op)


def query_variants(
    extractor: LocalExtractor, image: Image.Image, rotations: Sequence[int], upright: LocalFeatures | None = None
) -> list[LocalFeatures]:
    """Local features of a query photo as it is (``upright``, if already extracted) and turned by each of
    ``rotations``: a photo taken sideways without EXIF still verifies against upright stored photos
    (learned features and LightGlue's positional encoding are not rotation-invariant)."""
    out = [upright if upright is not None else extractor.extract_image(image)]
    return out + [extractor.extract_image(rotated(image, r)) for r in rotations if r % 360]


def combine(global_scores: np.ndarray, inliers: np.ndarray, cfg: RerankConfig) -> np.ndarray:
    """The re-ranking score (see the module docstring); arrays of equal shape."""
    g = np.asarray(global_scores, np.float32)
    inl = np.asarray(inliers, np.float32)
    boost = cfg.weight * np.minimum(inl, cfg.saturation) / max(cfg.saturation, 1)
    return np.where(inl >= cfg.min_inliers, g + boost, g).astype(np.float32)


def rerank(
    keys: Sequence[str], scores: Sequence[float], inliers: np.ndarray, cfg: RerankConfig
) -> tuple[list[str], np.ndarray]:
    """Re-sort a shortlist by :func:`combine` (stable: ties keep the global order)."""
    new = combine(np.asarray(scores, np.float32), inliers, cfg)
    order = np.argsort(-new, kind="stable")
    return [keys[i] for i in order], new[order]


@dataclass
class Reranked:
    keys: list[str]
    scores: np.ndarray
    inliers: np.ndarray  # inliers of each key, in the new order
    global_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # each key's rank before


def rerank_shortlist(
    verifier: Verifier,
    query: LocalFeatures | Sequence[LocalFeatures],
    keys: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    top_k: int | None = None,
) -> Reranked:
    """Verify the first ``top_k`` of a global ranking and re-sort them; the tail keeps its order below."""
    k = min(len(keys), top_k if top_k is not None else verifier.cfg.top_k)
    head = list(keys[:k])
    inl = verifier.inliers(query, head) if head else np.zeros(0, np.int32)
    new = combine(np.asarray(scores[:k], np.float32), inl, verifier.cfg)
    order = np.argsort(-new, kind="stable")
    tail = np.arange(k, len(keys))
    all_keys = [head[i] for i in order] + list(keys[k:])
    all_scores = np.concatenate([new[order], np.asarray(scores[k:], np.float32)])
    all_inl = np.concatenate([inl[order], np.full(len(tail), -1, np.int32)])
    return Reranked(all_keys, all_scores, all_inl, np.concatenate([order, tail]))


def verified_matrix(
    local: LocalStore,
    queries: Sequence[str | LocalFeatures],
    neighbours: Sequence[Sequence[str]],
    cfg: RerankConfig | None = None,
    *,
    progress: bool | None = None,
    verifier: Verifier | None = None,
) -> np.ndarray:
    """Inlier counts, Q x N int32, for each query's neighbours (stored keys; ragged lists are padded with -1).

    A query is a stored key or :class:`LocalFeatures`; "verified same landmark" is
    ``verified_matrix(...) >= cfg.verified_inliers`` (8 by default: no false positive among ~6,700
    negative pairs of the train validation, 72 % precision at 6). A query or neighbour without local
    features gets 0; padding is -1.
    """
    verifier = verifier or Verifier(local, cfg)
    width = max((len(n) for n in neighbours), default=0)
    out = np.full((len(queries), width), -1, np.int32)
    with progress_bar("verify neighbours", total=len(queries), enabled=progress) as bar:
        for qi, (q, nb) in enumerate(zip(queries, neighbours)):
            got = verifier.stored([q])[0] if isinstance(q, str) else (q, None)
            if got is None:
                out[qi, : len(nb)] = 0
            else:
                out[qi, : len(nb)] = [v.inliers for v in verifier.verify(got[0], list(nb), prepared=got[1])]
            bar.advance(1)
    return out


def rerank_rankings(
    verifier: Verifier,
    queries: Mapping[str, LocalFeatures | Sequence[LocalFeatures]],
    rankings: dict[str, tuple[Sequence[str], Sequence[float]]],
    *,
    progress: bool | None = None,
) -> dict[str, Reranked]:
    """Re-rank many global rankings ``query -> (keys, scores)``; queries without features keep their order."""
    out: dict[str, Reranked] = {}
    with progress_bar("re-rank", total=len(rankings), enabled=progress) as bar:
        for q, (keys, scores) in rankings.items():
            feats = queries.get(q)
            if feats is None:
                out[q] = Reranked(
                    list(keys), np.asarray(scores, np.float32), np.full(len(keys), -1, np.int32), np.arange(len(keys))
                )
            else:
                out[q] = rerank_shortlist(verifier, feats, list(keys), list(scores))
            bar.advance(1)
    return out


class LocalSource(Protocol):
    """What re-ranking test queries reads of a store (:class:`landmark.pipeline.StoreContext` has it)."""

    store: Any
    local: LocalStore | None

    @property
    def verifier(self) -> Verifier: ...

    def query_local_extractor(self) -> LocalExtractor: ...


def rerank_test_queries(
    lm: LocalSource,
    manifest,
    rankings: dict[str, tuple[Sequence[str], Sequence[float]]],
    work_dir,
    *,
    k: int = 100,
    progress: bool | None = None,
    vectors: dict[str, np.ndarray] | None = None,
    database: Sequence[str] | None = None,
):
    """Local features of a query manifest (cached, resumable in ``work_dir``) and its re-ranked rankings.

    ``lm`` has the store's local features (a :class:`landmark.pipeline.StoreContext`). With ``rerank.inverted_k > 0``
    the top of the local inverted index over ``database`` keys joins each global shortlist (global
    similarity from the query ``vectors``). Returns ``(rankings cut to k, failures, timings)``.
    """
    t0 = time.perf_counter()
    extractor = lm.query_local_extractor()
    cache = LocalStore.create(work_dir, extractor.signature)
    present = cache.present(manifest.ids())
    failures = extract_many(
        extractor,
        [r for r in manifest.records if r.id not in present],
        cache.add,
        progress=progress,
        description="local features queries",
    )
    verifier = lm.verifier
    feats: dict[str, Any] = cache.get(list(rankings))
    for r in [r for r in verifier.cfg.rotations if r % 360]:  # the queries turned: cached beside the upright ones
        turned = LocalStore.create(Path(work_dir) / f"rotated-{r % 360}", extractor.signature)
        have = turned.present(list(feats))
        todo = [rec for rec in manifest.records if rec.id in feats and rec.id not in have]
        with progress_bar(f"local features queries turned {r % 360}", total=len(todo), enabled=progress) as bar:
            for rec in todo:
                try:
                    turned.add([rec.id], [extractor.extract_image(rotated(load_image(rec.path), r))])
                except ImageError:
                    pass
                bar.advance(1)
        for q, f in turned.get(list(feats)).items():
            feats[q] = (list(feats[q]) if isinstance(feats[q], list) else [feats[q]]) + [f]
        turned.close()
    t1 = time.perf_counter()
    verifier.timings = Timings()
    extra: dict[str, float] = {}
    if verifier.cfg.inverted_k > 0 and vectors is not None:
        assert lm.local is not None  # lm.verifier (above) raises without local features
        inv = LocalInvertedIndex.build(lm.local, database, progress=progress)
        extra["inverted_build_s"] = time.perf_counter() - t1
        merged: dict[str, tuple[list[str], Sequence[float] | np.ndarray]] = {}
        for q, (global_keys, global_scores) in rankings.items():
            keys, scores = list(global_keys)[: verifier.cfg.top_k], list(global_scores)[: verifier.cfg.top_k]
            if q in feats:
                upright = feats[q] if isinstance(feats[q], LocalFeatures) else feats[q][0]
                local_keys, _ = inv.search(upright, verifier.cfg.inverted_k, ratio=verifier.cfg.ratio)

                def similarity(ks: list[str], v: np.ndarray = vectors[q]) -> np.ndarray:
                    return lm.store.vectors(ks) @ v

                merged[q] = merge_shortlists(keys, scores, local_keys, similarity)
            else:
                merged[q] = (keys, scores)
        extra["inverted_search_s"] = time.perf_counter() - t1 - extra["inverted_build_s"]
        result = {}
        with progress_bar("re-rank", total=len(merged), enabled=progress) as bar:
            for q, (short_keys, short_scores) in merged.items():
                result[q] = (
                    rerank_shortlist(verifier, feats[q], short_keys, short_scores, top_k=len(short_keys))
                    if q in feats
                    else Reranked(
                        short_keys, np.asarray(short_scores, np.float32), np.full(len(short_keys), -1, np.int32)
                    )
                )
                bar.advance(1)
    else:
        result = rerank_rankings(verifier, feats, rankings, progress=progress)
    t2 = time.perf_counter()
    cache.close()
    timings = {
        "extract_local_queries_s": t1 - t0,
        "rerank_s": t2 - t1,
        "rerank_pairs_per_s": verifier.timings.pairs / max(t2 - t1, 1e-9),
        **{f"rerank_{k_}": v for k_, v in verifier.timings.as_dict().items()},
        **extra,
    }
    return {q: r.keys[:k] for q, r in result.items()}, failures, timings
