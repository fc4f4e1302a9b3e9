"""Recognition (Baidu GLR19 §3): kNN voting, the trained classifier, non-landmark filters, grading and re-scoring.

Names are imported from their submodule on first use (landmark.utils.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .classifier import ClassifierPrediction, LandmarkClassifier
    from .filters import (
        ClassGroups,
        Detection,
        ImageNetPrior,
        OnnxDetector,
        detector_decision,
        distractor_scores,
        prior_decisions,
    )
    from .grading import grade_a, grade_b, tiered_scores
    from .knn import Vote, knn_vote
    from .pipeline import Decision, Evidence, Recognizer, ablation_configs, decide

_EXPORTS = {
    "ClassGroups": "filters",
    "ClassifierPrediction": "classifier",
    "Decision": "pipeline",
    "Detection": "filters",
    "Evidence": "pipeline",
    "ImageNetPrior": "filters",
    "LandmarkClassifier": "classifier",
    "OnnxDetector": "filters",
    "Recognizer": "pipeline",
    "Vote": "knn",
    "ablation_configs": "pipeline",
    "decide": "pipeline",
    "detector_decision": "filters",
    "distractor_scores": "filters",
    "grade_a": "grading",
    "grade_b": "grading",
    "knn_vote": "knn",
    "prior_decisions": "filters",
    "tiered_scores": "grading",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
