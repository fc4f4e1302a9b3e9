"""The recognition pipeline of the Baidu GLR19 report §3, composed from its parts.

``gather`` computes every piece of evidence for a batch of queries once (top-k labelled neighbours,
the kNN vote, the classifier's top-k, the object prior and detector decisions, the distractor
similarities); ``decide`` is a pure function of that evidence and a :class:`RecognitionConfig`, so an
ablation re-runs only ``decide`` with stages switched on one after the other. A query whose own
evidence shows its landmark (a unanimous top-k vote, a neighbour verified with local features:
``Evidence.inliers``, :func:`evidence_shows_landmark`) is not filtered by the object prior or the
distractor similarity threshold.

Order of the final scores: A1B1 > A1B2 > A2B1 > ... > A4B2 > non-landmark (filtered, demoted or
dropped); inside a grade, frequent landmarks first, then the kNN similarity (:mod:`.grading`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from ..data.images import ImageError, load_image
from ..utils.progress import progress_bar
from .classifier import ClassifierPrediction, LandmarkClassifier
from .config import RecognitionConfig
from .filters import (
    LANDMARK,
    NON_LANDMARK,
    PROBE_NAME,
    ClassGroups,
    DetectorDecision,
    PriorDecision,
    detector_decision,
    min_of_top_k,
    prior_decisions,
    similarity_index,
    top_similarities,
)
from .grading import boost_levels, frequent_landmarks, grade_a, grade_b, tiered_scores
from .knn import Vote, at_positions, knn_vote, merge_views, stack_views

log = logging.getLogger(__name__)
T = TypeVar("T")  # a query's local features (neighbour_inliers)

DISTRACTOR_SPLIT = "distractors"  # `landmark index add --split distractors`: user-given non-landmark photos
# the filters a query's verified unanimous vote overrules (evidence_shows_landmark); the detector's verdict (an
# object covering most of the photo) stands
OVERRULABLE = ("object_prior", "distractor")


@dataclass
class Evidence:
    """Everything the decision rules look at, for a batch of queries (rows aligned with ``ids``)."""

    ids: list[str]
    labels: np.ndarray  # Q x k neighbour landmark ids (-1 = none)
    scores: np.ndarray  # Q x k similarities
    keys: list[list[str | None]]  # Q x k neighbour ids
    votes: list[Vote]
    classifier: ClassifierPrediction | None = None
    prior: list[PriorDecision] | None = None
    detector: list[DetectorDecision | None] | None = None
    distractor: np.ndarray | None = None  # Q: min of top-k similarities to known non-landmarks
    distractor_set: int = 0  # how many known non-landmark photos there were
    inliers: np.ndarray | None = None  # Q x k verified local-feature inliers with each neighbour
    # (-1 = not verified); None: no local features (neighbour_inliers)


@dataclass
class Decision:
    landmark_id: int | None
    score: float  # in [0, 1], ordered by grade, then similarity
    grade: str  # e.g. "A1B1"; "non-landmark" when filtered; "" for kNN only
    evidence: dict[str, Any] = field(default_factory=dict)


def object_verdict(ev: Evidence, qi: int) -> str | None:
    """Which object filter calls query ``qi`` a non-landmark ("detector" or "object_prior"), if any:
    the detector's non-landmark first; a landmark part it found overrules the object prior."""
    det = ev.detector[qi] if ev.detector is not None else None
    if det is not None and det.decision == NON_LANDMARK:
        return "detector"
    if (
        ev.prior is not None
        and ev.prior[qi].decision == NON_LANDMARK
        and not (det is not None and det.decision == LANDMARK)
    ):
        return "object_prior"
    return None


def fired_filters(ev: Evidence, qi: int, cfg: RecognitionConfig) -> list[str]:
    """Which enabled filters call query ``qi`` a non-landmark, before its own evidence is weighed."""
    reasons = []
    verdict = object_verdict(ev, qi) if cfg.object_prior else None
    if verdict:
        reasons.append(verdict)
    if cfg.distractor_filter and ev.distractor is not None and ev.distractor[qi] > cfg.distractor_threshold:
        reasons.append("distractor")
    return reasons


def verified_support(ev: Evidence, qi: int, cfg: RecognitionConfig) -> int | None:
    """The most verified inliers between query ``qi`` and one of its top-k neighbours of the landmark
    it is voted; None where no such neighbour was verified (no local features, or no prediction)."""
    lab = ev.votes[qi].landmark_id
    if ev.inliers is None or lab is None:
        return None
    inliers = ev.inliers[qi, : cfg.k]
    mine = inliers[(ev.labels[qi, : len(inliers)] == lab) & (inliers >= 0)]
    return int(mine.max()) if len(mine) else None


def evidence_shows_landmark(ev: Evidence, qi: int, cfg: RecognitionConfig) -> bool:
    """Whether query ``qi``'s own evidence shows its landmark (``cfg.evidence_overrules``): all ``cfg.k``
    neighbours vote it and one of them is verified with at least ``cfg.evidence_inliers`` inliers.
    Such a query is the same place as labelled photos, geometrically: a similarity threshold to known
    non-landmarks, or an ImageNet prior that mistakes a tower for an object, does not outweigh that."""
    if not cfg.evidence_overrules or ev.votes[qi].votes < cfg.k:
        return False
    support = verified_support(ev, qi, cfg)
    return support is not None and support >= cfg.evidence_inliers


def overruled_filters(ev: Evidence, qi: int, cfg: RecognitionConfig) -> list[str]:
    """The fired filters (of :data:`OVERRULABLE`) that query ``qi``'s own evidence overrules
    (:func:`evidence_shows_landmark`)."""
    fired = [r for r in fired_filters(ev, qi, cfg) if r in OVERRULABLE]
    return fired if fired and evidence_shows_landmark(ev, qi, cfg) else []


def non_landmark_reasons(ev: Evidence, qi: int, cfg: RecognitionConfig) -> list[str]:
    """Which enabled filters call query ``qi`` a non-landmark, less those its evidence overrules."""
    overruled = overruled_filters(ev, qi, cfg)
    return [r for r in fired_filters(ev, qi, cfg) if r not in overruled]


def decide(ev: Evidence, cfg: RecognitionConfig) -> list[Decision]:
    """Labels, scores and grades for a batch from its evidence (pure; see the module docstring)."""
    n = len(ev.ids)
    classifier = ev.classifier if cfg.classifier else None  # the B grades read it
    use_b = classifier is not None
    n_a, n_b = (4 if cfg.grading else 1), (2 if use_b else 1)
    n_tiers = n_a * n_b + 1  # the last tier holds filtered queries
    labels = [v.landmark_id for v in ev.votes]
    a_grades, b_grades, tiers, flagged = [], [], [], []
    for qi in range(n):
        a = grade_a(ev.labels[qi, : cfg.k], ev.scores[qi, : cfg.k], labels[qi], cfg.t1, cfg.t2) if cfg.grading else 1
        b = grade_b(labels[qi], int(classifier.labels[qi, 0])) if classifier is not None else 1
        reasons = non_landmark_reasons(ev, qi, cfg)
        a_grades.append(a)
        b_grades.append(b)
        flagged.append(reasons)
        tiers.append(n_tiers - 1 if reasons else (a - 1) * n_b + (b - 1))
    boosts = None
    frequent: dict[int, int] = {}
    if cfg.frequent_rerank:
        frequent = frequent_landmarks(labels, [t == 0 for t in tiers], cfg.frequent_min)
        boosts = boost_levels(labels, frequent, [not f for f in flagged])
    scores = tiered_scores(tiers, [v.score for v in ev.votes], n_tiers, boosts)
    out = []
    for qi in range(n):
        grade = (
            "non-landmark"
            if flagged[qi]
            else ((f"A{a_grades[qi]}" if cfg.grading else "") + (f"B{b_grades[qi]}" if use_b else ""))
        )
        lab, score = labels[qi], float(scores[qi])
        if lab is None or (flagged[qi] and cfg.filtered == "drop"):
            lab, score = None, 0.0
        out.append(
            Decision(
                lab,
                score,
                grade,
                _evidence(
                    ev,
                    qi,
                    cfg,
                    flagged[qi],
                    a_grades[qi],
                    b_grades[qi],
                    lab is not None and lab in frequent and not flagged[qi],
                ),
            )
        )
    return out


def _evidence(
    ev: Evidence, qi: int, cfg: RecognitionConfig, reasons: list[str], a: int, b: int, frequent: bool
) -> dict[str, Any]:
    e: dict[str, Any] = {
        "knn": {
            "landmark_id": ev.votes[qi].landmark_id,
            "similarity": round(float(ev.votes[qi].score), 4),
            "votes": ev.votes[qi].votes,
        },
        "neighbours": [
            [key, round(float(s), 4), int(lab) if lab >= 0 else None]
            for key, s, lab in zip(ev.keys[qi][: cfg.k], ev.scores[qi, : cfg.k], ev.labels[qi, : cfg.k])
            if key is not None
        ],
        "filters": {"non_landmark": reasons, "overruled_by_evidence": overruled_filters(ev, qi, cfg)},
    }
    if ev.inliers is not None:  # the query's own geometric evidence (evidence_shows_landmark), per neighbour
        e["verification"] = {
            "inliers": [
                int(i) if i >= 0 else None
                for key, i in zip(ev.keys[qi][: cfg.k], ev.inliers[qi, : cfg.k])
                if key is not None
            ],
            "best_inliers": verified_support(ev, qi, cfg),
            "needed": cfg.evidence_inliers,
            "unanimous": ev.votes[qi].votes >= cfg.k,
            "shows_landmark": evidence_shows_landmark(ev, qi, cfg),
        }
    if ev.classifier is not None:
        e["classifier"] = [
            [int(lab), round(float(p), 4)] for lab, p in zip(ev.classifier.labels[qi], ev.classifier.probs[qi])
        ]
    if ev.prior is not None:
        p = ev.prior[qi]
        e["filters"]["object_prior"] = {
            "decision": p.decision,
            "landmark_prob": _r(p.landmark_prob),
            "non_landmark_prob": _r(p.non_landmark_prob),
            "top_group": p.top_group,
        }
    detected = ev.detector[qi] if ev.detector is not None else None
    if detected is not None:
        e["filters"]["detector"] = {"decision": detected.decision, "reason": detected.reason}
    if ev.distractor is not None:
        d = float(ev.distractor[qi])
        e["filters"]["distractor"] = {
            "min_top_k": _r(d) if np.isfinite(d) else None,
            "threshold": cfg.distractor_threshold,
            "known_non_landmarks": ev.distractor_set,
        }
    e["grade"] = {
        "A": a if cfg.grading else None,
        "B": b if cfg.classifier and ev.classifier is not None else None,
        "frequent_landmark": frequent,
    }
    return e


def _r(x: float) -> float | None:
    return round(float(x), 4) if np.isfinite(x) else None


# -- the ablation of the issue: stages switched on one after the other --------------------------------------
ABLATION_STAGES = ("classifier", "object_prior", "distractor_filter", "grading", "frequent_rerank")
ABLATION_NAMES = {
    None: "kNN only",
    "classifier": "+ classifier agreement",
    "object_prior": "+ object prior",
    "distractor_filter": "+ distractor filter",
    "grading": "+ grading",
    "frequent_rerank": "+ frequent-landmark re-rank",
}


def ablation_configs(cfg: RecognitionConfig, has_classifier: bool) -> list[tuple[str, RecognitionConfig | None, str]]:
    """(row name, config or None if skipped, note) for kNN only, then each stage of ``cfg`` that is on
    added in turn, so the last row is the pipeline ``cfg`` runs; a stage ``cfg`` switches off (by
    calibration or by the user) gets a row without figures that says so."""
    off: dict[str, Any] = {s: False for s in ABLATION_STAGES}  # Any: mypy checks **kwargs against every field
    rows: list[tuple[str, RecognitionConfig | None, str]] = [
        (ABLATION_NAMES[None], dataclasses.replace(cfg, **off), "")
    ]
    on: dict[str, Any] = {}
    for stage in ABLATION_STAGES:
        if stage == "classifier" and not has_classifier:
            rows.append(
                (
                    ABLATION_NAMES[stage],
                    None,
                    "skipped: no trained classifier head reads the store's descriptors "
                    "(ImageNet weights); build it with --model model.pt",
                )
            )
            continue
        if not getattr(cfg, stage):
            rows.append(
                (
                    ABLATION_NAMES[stage],
                    None,
                    f"off (recognition.{stage}: switched off by calibration or by the "
                    "configuration; see the report's calibration decisions)",
                )
            )
            continue
        on[stage] = True
        rows.append((ABLATION_NAMES[stage], dataclasses.replace(cfg, **(off | on)), ""))
    return rows


# -- gathering the evidence over a store -----------------------------------------------------------------
def neighbour_inliers(
    keys: Sequence[Sequence[str | None]],
    k: int,
    queries: Iterable[T | None],
    inliers_of: Callable[[T, list[str]], Sequence[int] | np.ndarray],
    *,
    progress: bool | None = None,
) -> np.ndarray:
    """``Evidence.inliers``: Q x ``k`` verified inliers between each query and its first ``k`` neighbour
    ``keys``, from ``inliers_of(query features, neighbour keys)`` (e.g. :meth:`Verifier.inliers
    <landmark.retrieval.rerank.Verifier.inliers>`); -1 where there is no neighbour or the query has
    no features (``None`` in ``queries``, which is read lazily, one query at a time, in row order)."""
    out = np.full((len(keys), k), -1, np.int32)
    with progress_bar("verify neighbours", total=len(keys), enabled=progress) as bar:
        for qi, (row, feats) in enumerate(zip(keys, queries)):
            at = [j for j, key in enumerate(row[:k]) if key is not None]
            if feats is not None and at:
                out[qi, at] = np.asarray(inliers_of(feats, [key for key in row[:k] if key is not None]), np.int32)
            bar.advance()
    return out


def nearest_other(rows: np.ndarray, pool: np.ndarray, offset: int) -> np.ndarray:
    """For each of ``rows`` (which are ``pool[offset:offset + len(rows)]``), its highest similarity to
    the rest of ``pool``; -inf where the pool holds nothing else."""
    if len(pool) < 2 or not len(rows):
        return np.full(len(rows), -np.inf, np.float32)
    sims, idx = top_similarities(rows, similarity_index(pool), 2)
    self_pos = np.arange(offset, offset + len(rows))[:, None]
    return np.where(idx == self_pos, -np.inf, sims).max(axis=1).astype(np.float32)


class Recognizer:
    """Gathers evidence for query descriptors against a :class:`~landmark.index.Store`."""

    def __init__(
        self,
        store,
        cfg: RecognitionConfig,
        classifier: LandmarkClassifier | None = None,
        groups: ClassGroups | None = None,
        detector=None,
    ):
        self.store, self.cfg = store, cfg
        self.classifier, self.groups, self.detector = classifier, groups, detector
        self._known: tuple[Any, list[str], np.ndarray, Any] | None = None  # (token, keys, vectors, FAISS index)

    def known_non_landmarks(self, cfg: RecognitionConfig | None = None) -> tuple[list[str], np.ndarray]:
        """Store photos known not to be landmarks: the ``distractors`` split, and the unlabelled photos
        the object prior flags unless they are nearer to a labelled photo than to any other of these
        (the prior mistakes some landmarks, e.g. towers, for objects, and such photos in this set
        would filter the queries of their own landmark). Never labels or ground truth."""
        keys, vecs, _ = self._known_set(cfg)
        return keys, vecs

    def _known_set(self, cfg: RecognitionConfig | None = None) -> tuple[list[str], np.ndarray, Any]:
        """:meth:`known_non_landmarks` and a FAISS index over them, made once per store generation."""
        cfg = cfg or self.cfg
        token = (self.store.generation, cfg.prior_landmark_min, cfg.prior_object_min)
        if self._known is None or self._known[0] != token:
            keys, vecs = self._find_known_non_landmarks(cfg)
            self._known = (token, keys, vecs, similarity_index(vecs))
        return self._known[1:]

    def _find_known_non_landmarks(self, cfg: RecognitionConfig) -> tuple[list[str], np.ndarray]:
        given = self.store.keys(DISTRACTOR_SPLIT)
        unlabelled = self.store.keys(labelled=False, other_than=DISTRACTOR_SPLIT)
        flagged: list[str] = []
        if self.groups is not None and unlabelled:
            probs = self.store.extras(unlabelled, PROBE_NAME)
            decisions = prior_decisions(probs, self.groups, cfg.prior_landmark_min, cfg.prior_object_min)
            flagged = [k for k, d in zip(unlabelled, decisions) if d.decision == NON_LANDMARK]
        vecs = self.store.vectors(given + flagged) if given or flagged else np.zeros((0, self.store.dim), np.float32)
        if flagged and self.store.keys(labelled=True, limit=1):
            own = vecs[len(given) :]
            near_landmark = self.store.search(own, 1, labelled_only=True).scores[:, 0]
            keep = near_landmark <= nearest_other(own, vecs, offset=len(given))
            flagged = [k for k, ok in zip(flagged, keep) if ok]
            vecs = np.concatenate([vecs[: len(given)], own[keep]])
        return given + flagged, vecs

    def labelled_neighbours(
        self, vectors: np.ndarray, regions: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[list[str | None]]]:
        """Each query's top-k labelled photos (landmark ids, similarities, keys); with ``regions``
        (``Q x R x dim``) found by the global descriptor or any region, at the best (:func:`merge_views`)."""
        k = self.cfg.k
        if regions is None or regions.ndim != 3 or len(regions) != len(vectors) or not regions.shape[1]:
            res = self.store.search(vectors, k, labelled_only=True)
            return res.landmark_ids, res.scores, res.keys
        step = 1024  # queries per search: (1 + R) x k candidates each, float32 views
        parts = [
            self._views_neighbours(vectors[i : i + step], regions[i : i + step], k)
            for i in range(0, len(vectors), step)
        ]
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            [row for p in parts for row in p[2]],
        )

    def _views_neighbours(self, vectors: np.ndarray, regions: np.ndarray, k: int):
        views = stack_views(vectors, regions)
        q, v, d = views.shape
        res = self.store.search(np.ascontiguousarray(views.reshape(q * v, d)), k, labelled_only=True)
        pos, scores = merge_views(res.rows.reshape(q, v, k), res.scores.reshape(q, v, k), k)
        labels = at_positions(res.landmark_ids.reshape(q, v * k), pos, -1)
        keys = [
            [res.keys[qi * v + j // k][j % k] if j >= 0 else None for j in row] for qi, row in enumerate(pos.tolist())
        ]
        return labels, scores, keys

    def detect(self, photos: Sequence[Any], *, progress: bool | None = None) -> list[DetectorDecision | None] | None:
        """The object detector's decision on each photo (a path or a PIL image) by the paper's rule
        (``cfg.detector_score_min``, ``cfg.detector_area_min``), for :meth:`gather`'s ``detections``.
        None without a detector or with the object filters off (``cfg.object_prior``); a photo that
        cannot be read gets None (the other filters still judge it)."""
        if self.detector is None or not self.cfg.object_prior:
            return None
        cfg = self.cfg
        out: list[DetectorDecision | None] = []
        with progress_bar("object detector", total=len(photos), enabled=progress) as bar:
            for photo in photos:
                try:
                    image = photo if isinstance(photo, Image.Image) else load_image(photo)
                    found = self.detector.detect(image)
                except ImageError as e:
                    log.warning("object detector skipped %s: %s", photo, e)
                    out.append(None)
                else:
                    out.append(
                        detector_decision(
                            found, image.size, self.detector.roles, cfg.detector_score_min, cfg.detector_area_min
                        )
                    )
                bar.advance()
        return out

    def gather(
        self,
        vectors: np.ndarray,
        ids: Sequence[str],
        prior_probs: np.ndarray | None = None,
        detections: Sequence[DetectorDecision | None] | None = None,
        descriptors: np.ndarray | None = None,
        regions: np.ndarray | None = None,
    ) -> Evidence:
        """``descriptors``: the queries' un-whitened descriptors, which the classifier of a whitened store reads;
        ``regions``: their other views (``Q x R x dim``: regional descriptors and the zoomed read,
        :meth:`landmark.Landmarks.query_views`), which also look for labelled neighbours (``cfg.regions``,
        ``cfg.zoom``). The filters and the classifier read the global descriptors only."""
        cfg = self.cfg
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        regions = regions if cfg.extra_views else None
        labels, scores, keys = self.labelled_neighbours(vectors, regions)
        ev = Evidence(list(ids), labels, scores, keys, knn_vote(labels, scores, cfg.k))
        if self.classifier is not None:
            head_input = descriptors if self.classifier.unwhitened else vectors
            if head_input is not None and len(head_input) == len(vectors):
                ev.classifier = self.classifier.predict(head_input, cfg.classifier_topk)
        if self.groups is not None:
            probs = (
                prior_probs
                if prior_probs is not None and len(prior_probs) == len(vectors)
                else np.full((len(vectors), len(self.groups.names)), np.nan, np.float32)
            )
            ev.prior = prior_decisions(probs, self.groups, cfg.prior_landmark_min, cfg.prior_object_min)
        if detections is not None:
            ev.detector = list(detections)
        known_keys, _, known_index = self._known_set()  # searched, never copied, per batch
        # the batch's flagged photos join them, unless nearer to a labelled photo (as in known_non_landmarks)
        batch = np.array([i for i in range(len(vectors)) if object_verdict(ev, i)], np.int64)
        if len(batch):
            near_object = np.maximum(
                top_similarities(vectors[batch], known_index, 1)[0].max(axis=1, initial=-np.inf),
                nearest_other(vectors[batch], vectors[batch], offset=0),
            )
            near_landmark = (
                ev.scores[batch, 0]
                if regions is None
                else self.store.search(vectors[batch], 1, labelled_only=True).scores[:, 0]
            )  # the global descriptor's
            batch = batch[near_landmark <= near_object]
        # each query's top-k among the known set and the kept batch photos (itself excluded); both
        # searched with FAISS, so a batch of 100k queries never makes a Q x Q matrix
        to_batch, rows = top_similarities(vectors, similarity_index(vectors[batch]), cfg.distractor_k + 1)
        hit_q, hit_j = np.nonzero(rows >= 0)
        is_self = batch[rows[hit_q, hit_j]] == hit_q
        to_batch[hit_q[is_self], hit_j[is_self]] = -np.inf
        candidates = np.concatenate([top_similarities(vectors, known_index, cfg.distractor_k)[0], to_batch], axis=1)
        ev.distractor = min_of_top_k(candidates, cfg.distractor_k)
        ev.distractor_set = len(known_keys) + len(batch)
        return ev
