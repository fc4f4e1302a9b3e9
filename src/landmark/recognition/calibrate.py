"""``landmark calibrate``: refit the recognition thresholds on a validation split carved from ``train``.

Validation landmark queries are labelled store photos held out per landmark: for a store whose model
``landmark train`` made, the validation photos its checkpoint records (those the model never saw);
otherwise the split of :func:`landmark.data.splits.split_by_photo`. They are answered against the
remaining labelled photos only. Validation non-landmark queries come from label-free sources only:
the unlabelled store photos that the object prior flags, and photos added with ``--split
distractors``. No test photo and no ground-truth file is read.

* ``prior_object_min``: the lowest value that flags at most ``landmark_loss`` of the labelled photos
  (clipped to [0.5, 0.995]); a false-rejection budget, which needs no non-landmark labels.
* ``distractor_threshold``: the lowest value whose filter fires on at most ``landmark_loss`` of the
  validation landmark queries (clipped to [0.5, 0.999]).
* ``t1`` / ``t2``: the pair (t1 >= t2, from quantiles of the validation similarities) maximising the
  GAP of kNN + grading on validation landmark and non-landmark queries; ties go to the pair closest to
  the paper's 0.9 / 0.85.
* ``frequent_rerank``: kept on only if the frequent-landmark re-rank does not lower that validation
  GAP (the paper's trick assumes most landmarks occur once among the queries; where every landmark
  is frequent it orders a grade by landmark popularity instead of similarity).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..data.manifests import ImageRecord
from ..data.splits import Split, split_by_photo
from ..features.extract import REGIONS_EXTRA, ExtractionResult
from ..index import Store, StoreError
from ..metrics import global_average_precision
from .config import RecognitionConfig
from .filters import LANDMARK, PROBE_NAME, ClassGroups, distractor_scores, prior_decisions
from .grading import boost_levels, frequent_landmarks, grade_a, tiered_scores
from .holdout import VAL_FRACTION, VAL_SEED, held_out_label, model_validation_ids
from .knn import at_positions, knn_vote, merge_views, stack_views
from .pipeline import Recognizer

CALIBRATION_META = "calibration"
log = logging.getLogger(__name__)


def _knn(
    db: np.ndarray, db_labels: np.ndarray, queries: np.ndarray, k: int, regions: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and similarities of each query's top-k in ``db``; with ``regions`` (``Q x R x d``)
    found by the global descriptor or any region, as recognition does (:func:`merge_views`)."""
    import faiss

    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db, dtype=np.float32))
    kk = min(k, len(db))
    views = stack_views(queries, regions)
    q, v, d = views.shape
    sims, idx = index.search(np.ascontiguousarray(views.reshape(q * v, d)), kk)
    pos, sims = merge_views(idx.reshape(q, v, kk), sims.reshape(q, v, kk), kk)
    rows = at_positions(idx.reshape(q, v * kk), pos, -1)
    labels = np.where(rows >= 0, db_labels[np.maximum(rows, 0)], -1)
    return labels, sims


def calibrated_views(report: dict[str, Any] | None) -> tuple[int, float]:
    """The ``recognition.regions`` and ``recognition.zoom`` a calibration report's thresholds were
    fitted with (1 and 1.0 in reports from before regions or zoom existed)."""
    validation = (report or {}).get("validation", {})
    return int(validation.get("regions", 1)), float(validation.get("zoom", 1.0))


def store_recognition(store) -> RecognitionConfig:
    """The store's recognition settings, with the query views (regions, zoom) its thresholds were fitted
    with: a store calibrated before they existed (or with other ones) keeps voting as then until
    ``landmark calibrate``."""
    cfg = store.config.recognition
    report = store.meta_value(CALIBRATION_META)
    if report is not None and calibrated_views(report) != cfg.views:
        (regions, zoom), (now_regions, now_zoom) = calibrated_views(report), cfg.views
        log.warning(
            "store %s was calibrated with recognition.regions=%d, zoom=%g, not %d, %g: recognising with "
            "%d, %g until `landmark calibrate`",
            store.root,
            regions,
            zoom,
            now_regions,
            now_zoom,
            regions,
            zoom,
        )
        cfg = dataclasses.replace(cfg, regions=regions, zoom=zoom)
    return cfg


class Calibrated(Protocol):
    """What calibration reads and sets of the recognition over a store
    (:class:`landmark.pipeline.Recognising` has it)."""

    @property
    def store(self) -> Store: ...

    @property
    def groups(self) -> ClassGroups | None: ...

    @property
    def prior_source(self) -> str: ...

    @property
    def recognition_config(self) -> RecognitionConfig: ...

    @property
    def recognizer(self) -> Recognizer: ...

    def set_recognition_config(self, cfg: RecognitionConfig) -> None: ...

    def query_views(
        self,
        items: Sequence[ImageRecord],
        *,
        progress: bool | None = None,
        cache_dir: str | Path | None = None,
        description: str = "queries",
    ) -> ExtractionResult: ...


def validation_regions(
    lm: Calibrated, keys: Sequence[str], vectors: np.ndarray, progress: bool | None = None
) -> tuple[np.ndarray | None, int]:
    """The other views (regions and zoomed read, :meth:`landmark.pipeline.Embedding.query_views`) of stored photos,
    re-extracted from their files (the store keeps global descriptors only), and how many photos could be
    read; a photo that cannot be read repeats its global descriptor, which adds nothing to its neighbours.
    None when the configuration has no other views."""
    cfg = lm.recognition_config
    if not cfg.extra_views or not len(keys):
        return None, 0
    rows = lm.store.get(list(keys))
    items = [ImageRecord(k, Path(path)) for k in keys if (path := rows[k].path)]
    res = lm.query_views(
        items,
        progress=progress,
        description="calibration: query views",
        cache_dir=lm.store.root / "_work" / "calibration-regions",
    )
    found = dict(zip(res.ids, res.extras.get(REGIONS_EXTRA, np.zeros((0, 0, 0), np.float16))))
    n_regions = next(iter(found.values())).shape[0] if found else 0
    out = np.repeat(np.asarray(vectors, np.float32)[:, None], max(n_regions, 1), axis=1)
    for i, k in enumerate(keys):
        if k in found:
            out[i] = found[k]
    return out, len(found)


def _budget_threshold(values: np.ndarray, n_total: int, loss: float, lo: float, hi: float, default: float) -> float:
    """The smallest threshold t (within [lo, hi]) such that at most ``loss * n_total`` values exceed t."""
    values = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])[::-1]
    allowed = int(np.floor(loss * n_total))
    if n_total == 0:
        return default
    t = float(values[allowed]) if allowed < len(values) else lo
    return float(np.clip(t, lo, hi))


def grading_gap(
    labels: np.ndarray,
    scores: np.ndarray,
    truth: Sequence[int | None],
    k: int,
    t1: float,
    t2: float,
    frequent_min: int | None = None,
) -> float:
    """GAP of kNN + grading (+ the frequent-landmark re-rank when ``frequent_min`` is given) on validation queries."""
    votes = knn_vote(labels, scores, k)
    tiers = [grade_a(labels[i, :k], scores[i, :k], v.landmark_id, t1, t2) - 1 for i, v in enumerate(votes)]
    predicted = [v.landmark_id for v in votes]
    boosts = None
    if frequent_min is not None:
        frequent = frequent_landmarks(predicted, [t == 0 for t in tiers], frequent_min)
        boosts = boost_levels(predicted, frequent, [True] * len(votes))
    final = tiered_scores(tiers, [v.score for v in votes], 4, boosts)
    preds = {str(i): (lab, float(s)) for i, (lab, s) in enumerate(zip(predicted, final)) if lab is not None}
    return global_average_precision(preds, {str(i): t for i, t in enumerate(truth)})


def fit_grading(
    labels: np.ndarray, scores: np.ndarray, truth: Sequence[int | None], k: int = 5, grid: Sequence[float] | None = None
) -> tuple[float, float, float]:
    """(t1, t2, GAP) maximising the GAP of kNN + grading on validation queries."""
    if grid is None:
        votes = knn_vote(labels, scores, k)
        best = np.array([v.score for v, t in zip(votes, truth) if t is not None and v.landmark_id is not None])
        grid = (
            sorted(set(np.round(np.quantile(best, np.linspace(0, 1, 21)), 4).tolist()) | {0.85, 0.9})
            if len(best)
            else [0.85, 0.9]
        )
    best_key, best_pair = None, (0.9, 0.85, 0.0)
    for t2 in grid:
        for t1 in grid:
            if t1 < t2:
                continue
            gap = grading_gap(labels, scores, truth, k, t1, t2)
            key = (round(gap, 9), -(abs(t1 - 0.9) + abs(t2 - 0.85)))
            if best_key is None or key > best_key:
                best_key, best_pair = key, (float(t1), float(t2), gap)
    return best_pair


def knn_gap(labels: np.ndarray, scores: np.ndarray, truth: Sequence[int | None], k: int) -> float:
    """GAP of the plain kNN vote (voted landmark, best similarity) on validation queries."""
    votes = knn_vote(labels, scores, k)
    preds = {str(i): (v.landmark_id, float(v.score)) for i, v in enumerate(votes) if v.landmark_id is not None}
    return global_average_precision(preds, {str(i): t for i, t in enumerate(truth)})


MIN_VALIDATION_QUERIES = 30  # fewer held-out landmark photos than this cannot fit a threshold


def _keep_defaults(
    lm: Calibrated,
    cfg: RecognitionConfig,
    n_labelled: int,
    n_val: int,
    *,
    write: bool,
    seed: int,
    t0: float,
    split: str,
) -> dict[str, Any]:
    """Calibration of a store with too few labelled photos to fit anything (e.g. one per landmark):
    the configured thresholds stay (``cfg`` holds the object prior's budget, which needs no validation
    split), and the stages that reorder votes by rules fitted to dense
    landmarks (grading, the frequent-landmark re-rank) are off, since nothing here can show they help."""
    why = (
        f"{n_val} validation landmark queries from {n_labelled} labelled photos (fewer than "
        f"{MIN_VALIDATION_QUERIES}: landmarks need at least 3 photos each to hold one out)"
    )
    log.warning(
        "store %s: %s; recognition keeps its default thresholds (but the object prior's budget over the "
        "labelled photos), grading and the frequent-landmark re-rank are off",
        lm.store.root,
        why,
    )
    cfg = dataclasses.replace(cfg, grading=False, frequent_rerank=False)
    report = {
        "thresholds": {
            "prior_object_min": cfg.prior_object_min,
            "distractor_threshold": cfg.distractor_threshold,
            "t1": cfg.t1,
            "t2": cfg.t2,
            "grading": False,
            "frequent_rerank": False,
        },
        "decisions": {
            "thresholds": f"defaults kept, but prior_object_min (its false-rejection budget over the "
            f"labelled photos): {why}",
            "grading": f"off (safe default): {why}",
            "frequent_rerank": f"off (safe default): {why}",
        },
        "fit": {},
        "defaults_kept": True,
        "validation": {
            "landmark_queries": n_val,
            "labelled_photos": n_labelled,
            "regions": cfg.regions,
            "zoom": float(cfg.zoom),
            "seed": seed,
            "prior_source": lm.prior_source,
            "split": split,
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    lm.set_recognition_config(cfg)
    if write:
        lm.store.update_config(dataclasses.replace(lm.store.config, recognition=cfg))
        lm.store.set_meta_value(CALIBRATION_META, report)
    return report


def calibrate_store(
    lm: Calibrated,
    *,
    train_ids: Sequence[str] | None = None,
    val_fraction: float = VAL_FRACTION,
    seed: int = VAL_SEED,
    landmark_loss: float = 0.02,
    max_negatives: int = 5000,
    max_region_queries: int = 2000,
    write: bool = True,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Refit the thresholds of ``lm``'s store (see the module docstring); returns what was fitted and on what."""

    t0 = time.perf_counter()
    store, cfg = lm.store, lm.recognition_config
    rows = store.get(store.keys())
    wanted = set(train_ids) if train_ids is not None else None
    labelled = [
        ImageRecord(k, Path(r.path or k), int(r.landmark_id))
        for k, r in rows.items()
        if r.landmark_id is not None and (wanted is None or k in wanted)
    ]
    if not labelled:
        raise StoreError(f"store {store.root} holds no labelled photos to calibrate on")
    held = model_validation_ids(store, [r.id for r in labelled], seed)
    held_val = [r for r in labelled if r.id in held]
    if held_val:  # exactly the photos the store's trained model never trained on
        split = Split(
            [r for r in labelled if r.id not in held],
            held_val,
            sorted({r.landmark_id for r in labelled if r.landmark_id is not None}),
        )
    else:
        try:
            split = split_by_photo(labelled, val_fraction, 2, seed)
        except ValueError:
            split = Split([], [], [])
    fitted: dict[str, Any] = {}

    # 1. the object prior: a false-rejection budget over all labelled photos (a quantile of theirs, which
    # needs no validation split: from a few photos it flags none of them)
    if lm.groups is not None:
        keys = [r.id for r in labelled]
        probs = store.extras(keys, PROBE_NAME)
        dec = prior_decisions(probs, lm.groups, cfg.prior_landmark_min, 0.0)
        cand = np.array(
            [d.non_landmark_prob for d in dec if d.decision != LANDMARK and np.isfinite(d.non_landmark_prob)]
        )
        cfg = dataclasses.replace(
            cfg, prior_object_min=_budget_threshold(cand, len(keys), landmark_loss, 0.5, 0.995, cfg.prior_object_min)
        )
        fitted["prior_object_min"] = cfg.prior_object_min
    if len(split.val) < MIN_VALIDATION_QUERIES:
        return _keep_defaults(
            lm,
            cfg,
            len(labelled),
            len(split.val),
            write=write,
            seed=seed,
            t0=t0,
            split=held_out_label(store) if held_val else "by photo",
        )

    # 2. the distractor filter: a false-rejection budget over the validation landmark queries
    lm.set_recognition_config(cfg)
    neg_keys, neg_vecs = lm.recognizer.known_non_landmarks(cfg)
    val_keys = [r.id for r in split.val]
    val_vecs = store.vectors(val_keys)
    val_d = distractor_scores(val_vecs, neg_vecs, cfg.distractor_k)
    if len(neg_keys) >= cfg.distractor_k:
        cfg = dataclasses.replace(
            cfg,
            distractor_threshold=_budget_threshold(
                val_d, len(val_keys), landmark_loss, 0.5, 0.999, cfg.distractor_threshold
            ),
        )
        neg_d = distractor_scores(neg_vecs, neg_vecs, cfg.distractor_k, neg_keys, neg_keys)
        fitted["distractor_threshold"] = cfg.distractor_threshold
        fitted["distractor_catch_rate_on_known_non_landmarks"] = float(np.mean(neg_d > cfg.distractor_threshold))

    # 3. grading thresholds: maximise validation GAP of kNN + grading
    db_keys = [r.id for r in split.train]
    db_vecs = store.vectors(db_keys)
    db_labels = np.array([r.landmark_id for r in split.train], dtype=np.int64)
    rng = np.random.default_rng(seed)
    neg_pick = rng.permutation(len(neg_keys))[:max_negatives] if len(neg_keys) else np.zeros(0, np.int64)
    # with regions on, the landmark queries (at most max_region_queries of them, re-read from their files,
    # with as large a share of the non-landmark queries) look for neighbours with their regions too, as
    # recognition does; non-landmark queries use their global descriptors only: on gldv2-mini the regions
    # raised the mean top-1 / top-5 labelled similarity of 300 UKBench photos by < 0.001, of landmark
    # photos by 0.007 (leave-one-out over train, ImageNet and cpu-mini models). The zoomed read raises them
    # more (0.524 -> 0.568 for 300 of them, cpu-mini model), so with zoom on the non-landmark queries are
    # read with their views too, and to bound that cost there are only as many as landmark queries.
    val_pick = (
        np.sort(rng.permutation(len(val_keys))[:max_region_queries]) if cfg.extra_views else np.arange(len(val_keys))
    )
    neg_pick = neg_pick[: int(round(len(neg_pick) * len(val_pick) / max(1, len(val_keys))))]
    if cfg.zoom > 1:
        neg_pick = neg_pick[: len(val_pick)]
    val_regions, with_regions = validation_regions(lm, [val_keys[i] for i in val_pick], val_vecs[val_pick], progress)
    queries = np.concatenate([val_vecs[val_pick], neg_vecs[neg_pick]]) if len(neg_pick) else val_vecs[val_pick]
    regions = None
    if val_regions is not None:
        neg_regions = np.repeat(neg_vecs[neg_pick][:, None], val_regions.shape[1], axis=1)
        if cfg.zoom > 1 and len(neg_pick):
            read, _ = validation_regions(lm, [neg_keys[i] for i in neg_pick], neg_vecs[neg_pick], progress)
            neg_regions = read if read is not None and read.shape[1:] == val_regions.shape[1:] else neg_regions
        regions = np.concatenate([val_regions, neg_regions])
    truth = [split.val[i].landmark_id for i in val_pick] + [None] * len(neg_pick)
    labels, scores = _knn(db_vecs, db_labels, queries, cfg.k, regions)
    t1, t2, gap = fit_grading(labels, scores, truth, cfg.k)
    gap_knn = knn_gap(labels, scores, truth, cfg.k)
    grading = bool(gap >= gap_knn)  # grading is kept only where it does not lower the kNN vote's GAP
    cfg = dataclasses.replace(cfg, t1=t1, t2=t2, grading=grading)
    fitted.update(
        {"t1": t1, "t2": t2, "grading": grading, "validation_gap_knn": gap_knn, "validation_gap_knn_grading": gap}
    )

    # 4. the frequent-landmark re-rank: kept only where it does not lower that validation GAP
    gap_frequent = grading_gap(labels, scores, truth, cfg.k, t1, t2, frequent_min=cfg.frequent_min)
    cfg = dataclasses.replace(cfg, frequent_rerank=bool(grading and gap_frequent >= gap))
    fitted.update({"frequent_rerank": cfg.frequent_rerank, "validation_gap_knn_grading_frequent": gap_frequent})
    decisions = {
        "grading": (
            f"on: validation GAP {gap_knn:.4f} -> {gap:.4f}"
            if grading
            else f"off: it lowered validation GAP {gap_knn:.4f} -> {gap:.4f}"
        ),
        "frequent_rerank": (
            "on: it did not lower validation GAP"
            if cfg.frequent_rerank
            else "off: "
            + ("grading is off" if not grading else f"it lowered validation GAP {gap:.4f} -> {gap_frequent:.4f}")
        ),
    }

    chosen = ("prior_object_min", "distractor_threshold", "t1", "t2", "grading", "frequent_rerank")
    report = {
        "thresholds": {k: fitted[k] for k in chosen if k in fitted},
        "decisions": decisions,
        "fit": {k: v for k, v in fitted.items() if k not in chosen},
        "validation": {
            "landmark_queries": len(val_pick),
            "database_photos": len(split.train),
            "regions": cfg.regions,
            "zoom": float(cfg.zoom),
            "photos_with_regions": with_regions,
            "non_landmark_queries": int(len(neg_pick)),
            "known_non_landmarks": len(neg_keys),
            "split": held_out_label(store) if held_val else "by photo",
            "val_fraction": val_fraction,
            "seed": seed,
            "landmark_loss": landmark_loss,
            "prior_source": lm.prior_source,
            "non_landmark_source": "unlabelled store photos flagged by the object prior + split 'distractors'",
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    lm.set_recognition_config(cfg)
    if write:
        store.update_config(dataclasses.replace(store.config, recognition=cfg))
        store.set_meta_value(CALIBRATION_META, report)
    return report
