"""Another training set from unlabelled photos: cluster them, one pseudo-landmark per cluster.

The Baidu GLR19 solution (§2.1.1) clustered the stage-2 *index* set into about 40k classes and
fine-tuned a model on them (``res152_arcmargin_index``), one of the six it concatenated. Here the
clusters are the connected components of the graph that joins two photos when each is among the
other's ``neighbours`` nearest and their cosine similarity reaches ``threshold`` (mutual k-NN, so a
photo similar to everything, e.g. a blank sky, cannot chain unrelated groups). The threshold depends
on the descriptor, so by default it is chosen on labelled photos: the lowest one at which the
clusters those photos form are at least ``purity`` pure.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..data import DatasetError
from ..data.manifests import PSEUDO_LABEL_OFFSET
from ..recognition.holdout import held_out_label, model_validation_ids
from ..utils.config import ConfigError
from ..utils.io import atomic_path
from ..utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class ClusterConfig:
    neighbours: int = 10  # k of the mutual k-NN graph
    threshold: float | None = None  # cosine similarity an edge needs; None = chosen on labelled photos
    min_size: int = 3  # smaller clusters stay unlabelled
    purity: float = 0.99  # what the chosen threshold must reach on the labelled photos
    candidates: tuple[float, ...] = tuple(round(0.5 + 0.025 * i, 3) for i in range(19))  # 0.5 ... 0.95
    threshold_photos: int = 20000  # at most this many labelled photos choose it (whole landmarks, drawn at random)


@dataclass
class ThresholdChoice:
    threshold: float
    rows: list[dict] = field(default_factory=list)  # per candidate: threshold, purity, coverage, clusters


def mutual_knn_clusters(vectors: np.ndarray, threshold: float, neighbours: int = 10, min_size: int = 3) -> np.ndarray:
    """Cluster index (0, 1, ...) of each of the L2-normalised ``vectors``, -1 for photos in no cluster
    of ``min_size`` or more (:func:`clusters_of_graph` over their exact ``neighbours``-NN)."""
    return clusters_of_graph(*exact_graph(vectors, neighbours), threshold, min_size)


def exact_graph(vectors: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's ``neighbours`` + 1 nearest among ``vectors`` (itself included): similarities and positions."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if not len(x):
        return np.zeros((0, 1), np.float32), np.zeros((0, 1), np.int64)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(x, min(neighbours + 1, len(x)))


def clusters_of_graph(sims: np.ndarray, nbrs: np.ndarray, threshold: float, min_size: int = 3) -> np.ndarray:
    """The clusters of :func:`mutual_knn_clusters` from a k-NN table: row i lists photo i's nearest
    photos (positions in the same set, -1 = none; i itself may be among them) and their similarities.
    Numbered by decreasing size, ties by first photo."""
    n = len(nbrs)
    near = [
        set(int(j) for j, s in zip(row_n, row_s) if j != i and j >= 0 and s >= threshold)
        for i, (row_n, row_s) in enumerate(zip(nbrs.tolist(), sims.tolist()))
    ]
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in near[i]:
            if i in near[j]:
                parent[root(i)] = root(j)
    roots = [root(i) for i in range(n)]
    sizes = Counter(roots)
    first: dict[int, int] = {}
    for i, r in enumerate(roots):
        first.setdefault(r, i)
    kept = sorted((r for r, c in sizes.items() if c >= min_size), key=lambda r: (-sizes[r], first[r]))
    number = {r: c for c, r in enumerate(kept)}
    return np.array([number.get(r, -1) for r in roots], np.int64)


def cluster_purity(clusters: np.ndarray, labels: Sequence[int]) -> tuple[float, float]:
    """``(purity, coverage)`` of ``clusters`` against the true ``labels``: the share of clustered
    photos that carry their cluster's majority label (1.0 when none is clustered), and the share of
    photos clustered at all."""
    clusters, label_of = np.asarray(clusters), np.asarray(labels)
    inside = clusters >= 0
    if not inside.any():
        return 1.0, 0.0
    majority = sum(Counter(label_of[clusters == c].tolist()).most_common(1)[0][1] for c in np.unique(clusters[inside]))
    return majority / int(inside.sum()), float(inside.mean())


def choose_threshold(vectors: np.ndarray, labels: Sequence[int], cfg: ClusterConfig) -> ThresholdChoice:
    """The lowest of ``cfg.candidates`` whose clusters of the labelled ``vectors`` are at least
    ``cfg.purity`` pure and cover some photo (the highest candidate when none is)."""
    if len(set(labels)) < 2:
        raise DatasetError("choosing a clustering threshold needs labelled photos of at least 2 landmarks")
    rows = []
    graph = exact_graph(vectors, cfg.neighbours)  # searched once, cut at each candidate
    for t in sorted(cfg.candidates):
        c = clusters_of_graph(*graph, t, cfg.min_size)
        purity, coverage = cluster_purity(c, labels)
        rows.append({"threshold": t, "purity": purity, "coverage": coverage, "clusters": int(c.max() + 1)})
    good = [r for r in rows if r["purity"] >= cfg.purity and r["coverage"] > 0]
    if not good:
        log.warning(
            "no clustering threshold of %s makes clusters of the labelled photos %.0f %% pure: using the highest, %g",
            ", ".join(f"{t:g}" for t in sorted(cfg.candidates)),
            100 * cfg.purity,
            rows[-1]["threshold"],
        )
    return ThresholdChoice((good[0] if good else rows[-1])["threshold"], rows)


def write_labels(path: str | Path, ids: Sequence[str], clusters: np.ndarray, offset: int = PSEUDO_LABEL_OFFSET) -> int:
    """Write the clustered photos as ``id,landmark_id`` rows (landmark id = ``offset`` + cluster),
    the columns of GLDv2's ``train.csv`` that training reads; returns how many rows."""
    n = 0
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "landmark_id"])
        for i, c in zip(ids, np.asarray(clusters).tolist()):
            if c >= 0:
                w.writerow([i, offset + c])
                n += 1
    return n


def relabel(records: Sequence, labels: Mapping[str, int]) -> list:
    """``records`` with their labels from ``labels`` (by id); photos it does not name are left out."""
    return [replace(r, landmark_id=labels[r.id]) for r in records if r.id in labels]


@dataclass
class StoreClusters:
    ids: list[str]
    clusters: np.ndarray  # per id: cluster index, -1 = in none
    threshold: float
    chosen_on: str  # what chose the threshold ("given", or which labelled photos)
    choice: ThresholdChoice | None = None


def check_cluster(cfg: ClusterConfig) -> ClusterConfig:
    """``cfg`` if its values are in range, else a :class:`ConfigError` naming the setting."""
    if cfg.neighbours < 1 or cfg.min_size < 2 or cfg.threshold_photos < 2:
        raise ConfigError(
            f"clustering needs neighbours >= 1, min_size >= 2 and threshold_photos >= 2, got "
            f"{cfg.neighbours}, {cfg.min_size}, {cfg.threshold_photos}"
        )
    if cfg.threshold is not None and not -1.0 <= cfg.threshold <= 1.0:
        raise ConfigError(f"clustering threshold: a cosine similarity in [-1, 1], got {cfg.threshold}")
    if not 0.0 < cfg.purity <= 1.0 or not cfg.candidates:
        raise ConfigError("clustering purity must be in (0, 1] and the candidate thresholds non-empty")
    return cfg


def cluster_store(
    store, split: str = "index", cfg: ClusterConfig | None = None, *, exclude: Collection[str] = ()
) -> StoreClusters:
    """Cluster the stored photos of ``split`` (less ``exclude``) by their global descriptors. Without ``cfg.threshold``
    it is chosen on the store's labelled photos: those its trained model (or learned whitening) held
    out where known, since the photos a model trained on sit closer than new ones would. Excluded
    photos are no neighbours; where more than ``cfg.neighbours`` of them come before the others in a
    photo's ranking, that photo has fewer neighbours than asked (see :func:`_store_graph`)."""
    cfg = check_cluster(cfg or ClusterConfig())
    ids = store.keys(split)
    if not ids:
        raise DatasetError(
            f"the store has no photos of split {split!r} "
            f"(it has: {', '.join(sorted(store.info()['splits'])) or 'none'})"
        )
    skip = set(exclude)
    in_split, ids = len(ids), [k for k in ids if k not in skip]
    choice, chosen_on, threshold = None, "given", cfg.threshold
    if threshold is None:
        rows = store.get(store.keys())
        own = set(ids)
        labelled = [k for k, r in rows.items() if r.landmark_id is not None and k not in own]
        if not labelled:
            raise DatasetError(
                f"no labelled photos outside split {split!r} to choose the clustering threshold on: "
                "give one (--threshold)"
            )
        held = model_validation_ids(store, labelled)
        pick = whole_landmarks(
            sorted(held) if held else labelled, {k: rows[k].landmark_id for k in labelled}, cfg.threshold_photos
        )
        chosen_on = f"{len(pick)} labelled photos {held_out_label(store)}" if held else f"{len(pick)} labelled photos"
        choice = choose_threshold(store.vectors(pick), [rows[k].landmark_id for k in pick], cfg)
        threshold = choice.threshold
    graph = _store_graph(store, split, ids, cfg.neighbours, room=in_split > len(ids))
    return StoreClusters(ids, clusters_of_graph(*graph, threshold, cfg.min_size), threshold, chosen_on, choice)


def whole_landmarks(ids: Sequence[str], label: Mapping[str, int], limit: int, seed: int = 0) -> list[str]:
    """``ids``, or when more than ``limit`` the photos of whole landmarks in a random order, each taken
    if it still fits under ``limit`` (the first always): a sample as dense per landmark as the whole,
    unlike a sample of photos."""
    if len(ids) <= limit:
        return list(ids)
    by: dict[int, list[str]] = {}
    for k in ids:
        by.setdefault(label[k], []).append(k)
    out: list[str] = []
    for lab in np.random.default_rng(seed).permutation(sorted(by)).tolist():
        if out and len(out) + len(by[lab]) > limit:
            continue
        out += by[lab]
    return out


def _store_graph(
    store, split: str, ids: Sequence[str], neighbours: int, *, room: bool, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Each of ``ids``' ``neighbours`` + 1 nearest photos among ``ids`` (itself included) by the store's
    own index (exact, or IVF-PQ with re-ranking on a compressed store, so that a million-photo split
    clusters in ANN time): similarities and positions in ``ids``, -inf / -1 where fewer are found (with
    ``room``, the split holds other photos, e.g. excluded ones: the search leaves room for ``neighbours`` of them)."""
    pos = {k: i for i, k in enumerate(ids)}
    k = neighbours + 1
    wide = k + (neighbours if room else 0)
    sims = np.full((len(ids), k), -np.inf, np.float32)
    nbrs = np.full((len(ids), k), -1, np.int64)
    with progress_bar(f"neighbours of {split}", len(ids), enabled=None if len(ids) > batch else False) as bar:
        for start in range(0, len(ids), batch):
            part = ids[start : start + batch]
            res = store.search(store.vectors(part), wide, splits=[split])
            for i, (keys, scores) in enumerate(zip(res.keys, res.scores.tolist())):
                kept = [(pos[key], s) for key, s in zip(keys, scores) if key in pos][:k]
                if kept:
                    nbrs[start + i, : len(kept)], sims[start + i, : len(kept)] = zip(*kept)
            bar.advance(len(part))
    return sims, nbrs
