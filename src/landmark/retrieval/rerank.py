"""Spatial-verification re-ranking of the global shortlist (Baidu GLR19 §2.3), and verified-neighbour matrices.

For each query, the global top-K stored photos are matched with the query's local features
(:mod:`.matching`) and verified (:mod:`.verification`); the new score of a shortlisted photo is

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
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator, Protocol
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
import torch

from .config import RerankConfig
from ..features.local import LocalExtractor, LocalFeatures, extract_many
from ..index.local import LocalStore
from ..utils.progress import progress_bar
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

    io: float = 0.0          # reading stored features and preparing descriptors
    matching: float = 0.0    # mutual NN + ratio test
    ransac: float = 0.0      # MAGSAC++
    pairs: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"io_s": self.io, "matching_s": self.matching, "ransac_s": self.ransac, "pairs": self.pairs}


class Verifier:
    """Verifies query features against stored photos; prepared stored descriptors are cached in memory."""

    def __init__(self, local: LocalStore, cfg: RerankConfig | None = None, *, cache_bytes: int = 2 << 30,
                 threads: int | None = None):
        self.local = local
        self.cfg = cfg or RerankConfig()
        self.kind = str(local.signature.get("kind", "rootsift"))
        self._cache: OrderedDict[str, tuple[LocalFeatures, Prepared]] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._used = 0
        self.timings = Timings()
        self.threads = int(threads or min(2, os.cpu_count() or 1))
        self._executor: ThreadPoolExecutor | None = None

    def prepare_query(self, feats: LocalFeatures) -> Prepared:
        return prepare(feats.descriptors, self.kind)

    def stored(self, keys: Sequence[str]) -> list[tuple[LocalFeatures, Prepared] | None]:
        """Features and prepared descriptors of stored photos (None where a key has none)."""
        t0 = time.perf_counter()
        missing = [k for k in dict.fromkeys(keys) if k not in self._cache]
        if missing:
            for k, f in self.local.get(missing).items():
                f = LocalFeatures(np.asarray(f.keypoints), np.asarray(f.descriptors), f.scale, f.width, f.height)
                p = prepare(f.descriptors, self.kind)
                self._cache[k] = (f, p)
                self._used += p.mat.numel() + f.keypoints.nbytes
            while self._used > self._cache_bytes and len(self._cache) > 1:
                _, (f, p) = self._cache.popitem(last=False)
                self._used -= p.mat.numel() + f.keypoints.nbytes
        out = []
        for k in keys:
            hit = self._cache.get(k)
            if hit is not None:
                self._cache.move_to_end(k)
            out.append(hit)
        self.timings.io += time.perf_counter() - t0
        return out

    def verify(self, query: LocalFeatures, keys: Sequence[str], prepared: Prepared | None = None) -> list[Verification]:
        """One :class:`Verification` per stored key (no inliers where a key has no local features).

        Pairs are spread over ``threads`` Python threads, each running its matrix product and
        RANSAC single-threaded (both release the GIL): on small per-pair products this beats
        multi-threaded BLAS, which also collapses when the CPU is shared.
        """
        cfg = self.cfg
        t0 = time.perf_counter()
        qp = prepared if prepared is not None else self.prepare_query(query)
        self.timings.io += time.perf_counter() - t0
        stored = self.stored(keys)
        qxy = query.xy
        out = [Verification() for _ in keys]
        spent = np.zeros((len(keys), 2))

        def one(i: int) -> None:
            t_a = time.perf_counter()
            m = match_many(qp, [stored[i][1]], ratio=cfg.ratio, mutual=cfg.mutual)[0]
            t_b = time.perf_counter()
            out[i] = verify(qxy, stored[i][0].xy, m, model=cfg.model, threshold=cfg.threshold,
                            max_iters=cfg.max_iters, min_inliers=cfg.min_inliers)
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
        total = spent.sum(axis=0)                      # thread time, scaled to the wall time it took
        share = total / total.sum() if total.sum() > 0 else np.array([0.5, 0.5])
        self.timings.matching += float(wall * share[0])
        self.timings.ransac += float(wall * share[1])
        self.timings.pairs += len(keys)
        return out

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="verify")
        return self._executor

    def inliers(self, query: LocalFeatures, keys: Sequence[str]) -> np.ndarray:
        return np.array([v.inliers for v in self.verify(query, keys)], np.int32)


def combine(global_scores: np.ndarray, inliers: np.ndarray, cfg: RerankConfig) -> np.ndarray:
    """The re-ranking score (see the module docstring); arrays of equal shape."""
    g = np.asarray(global_scores, np.float32)
    inl = np.asarray(inliers, np.float32)
    boost = cfg.weight * np.minimum(inl, cfg.saturation) / max(cfg.saturation, 1)
    return np.where(inl >= cfg.min_inliers, g + boost, g).astype(np.float32)


def rerank(keys: Sequence[str], scores: Sequence[float], inliers: np.ndarray,
           cfg: RerankConfig) -> tuple[list[str], np.ndarray]:
    """Re-sort a shortlist by :func:`combine` (stable: ties keep the global order)."""
    new = combine(np.asarray(scores, np.float32), inliers, cfg)
    order = np.argsort(-new, kind="stable")
    return [keys[i] for i in order], new[order]


@dataclass
class Reranked:
    keys: list[str]
    scores: np.ndarray
    inliers: np.ndarray                     # inliers of each key, in the new order
    global_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))   # each key's rank before


def rerank_shortlist(verifier: Verifier, query: LocalFeatures, keys: Sequence[str], scores: Sequence[float],
                     top_k: int | None = None) -> Reranked:
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


def verified_matrix(local: LocalStore, queries: Sequence[str | LocalFeatures], neighbours: Sequence[Sequence[str]],
                    cfg: RerankConfig | None = None, *, progress: bool | None = None,
                    verifier: Verifier | None = None) -> np.ndarray:
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
                out[qi, :len(nb)] = 0
            else:
                out[qi, :len(nb)] = [v.inliers for v in verifier.verify(got[0], list(nb), prepared=got[1])]
            bar.advance(1)
    return out


def rerank_rankings(verifier: Verifier, queries: dict[str, LocalFeatures],
                    rankings: dict[str, tuple[Sequence[str], Sequence[float]]], *,
                    progress: bool | None = None) -> dict[str, Reranked]:
    """Re-rank many global rankings ``query -> (keys, scores)``; queries without features keep their order."""
    out: dict[str, Reranked] = {}
    with progress_bar("re-rank", total=len(rankings), enabled=progress) as bar:
        for q, (keys, scores) in rankings.items():
            feats = queries.get(q)
            if feats is None:
                out[q] = Reranked(list(keys), np.asarray(scores, np.float32), np.full(len(keys), -1, np.int32),
                                  np.arange(len(keys)))
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


def rerank_test_queries(lm: LocalSource, manifest, rankings: dict[str, tuple[Sequence[str], Sequence[float]]], work_dir, *,
                        k: int = 100, progress: bool | None = None, vectors: dict[str, np.ndarray] | None = None,
                        database: Sequence[str] | None = None):
    """Local features of a query manifest (cached, resumable in ``work_dir``) and its re-ranked rankings.

    ``lm`` has the store's local features (a :class:`landmark.pipeline.StoreContext`). With ``rerank.inverted_k > 0``
    the top of the local inverted index over ``database`` keys joins each global shortlist (global
    similarity from the query ``vectors``). Returns ``(rankings cut to k, failures, timings)``.
    """
    t0 = time.perf_counter()
    extractor = lm.query_local_extractor()
    cache = LocalStore.create(work_dir, extractor.signature)
    present = cache.present(manifest.ids())
    failures = extract_many(extractor, [r for r in manifest.records if r.id not in present], cache.add,
                            progress=progress, description="local features queries")
    t1 = time.perf_counter()
    verifier = lm.verifier
    verifier.timings = Timings()
    feats = cache.get(list(rankings))
    extra: dict[str, float] = {}
    if verifier.cfg.inverted_k > 0 and vectors is not None:
        inv = LocalInvertedIndex.build(lm.local, database, progress=progress)
        extra["inverted_build_s"] = time.perf_counter() - t1
        merged = {}
        for q, (keys, scores) in rankings.items():
            keys, scores = list(keys)[: verifier.cfg.top_k], list(scores)[: verifier.cfg.top_k]
            if q in feats:
                local_keys, _ = inv.search(feats[q], verifier.cfg.inverted_k, ratio=verifier.cfg.ratio)
                keys, scores = merge_shortlists(keys, scores, local_keys,
                                                lambda ks, v=vectors[q]: lm.store.vectors(ks) @ v)
            merged[q] = (keys, scores)
        rankings = merged
        extra["inverted_search_s"] = time.perf_counter() - t1 - extra["inverted_build_s"]
        result = {}
        with progress_bar("re-rank", total=len(rankings), enabled=progress) as bar:
            for q, (keys, scores) in rankings.items():
                result[q] = (rerank_shortlist(verifier, feats[q], keys, scores, top_k=len(keys)) if q in feats else
                             Reranked(list(keys), np.asarray(scores, np.float32), np.full(len(keys), -1, np.int32)))
                bar.advance(1)
    else:
        result = rerank_rankings(verifier, feats, rankings, progress=progress)
    t2 = time.perf_counter()
    cache.close()
    timings = {"extract_local_queries_s": t1 - t0, "rerank_s": t2 - t1,
               "rerank_pairs_per_s": verifier.timings.pairs / max(t2 - t1, 1e-9),
               **{f"rerank_{k_}": v for k_, v in verifier.timings.as_dict().items()}, **extra}
    return {q: r.keys[:k] for q, r in result.items()}, failures, timings
