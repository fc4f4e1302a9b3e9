"""Recognition (Baidu GLR19 §3): kNN voting, the trained classifier, non-landmark filters, grading and re-scoring."""

from .classifier import ClassifierPrediction, LandmarkClassifier
from .filters import ClassGroups, Detection, ImageNetPrior, OnnxDetector, detector_decision, distractor_scores, prior_decisions
from .grading import grade_a, grade_b, tiered_scores
from .knn import Vote, knn_vote
from .pipeline import Decision, Evidence, Recognizer, ablation_configs, decide

__all__ = ["ClassGroups", "ClassifierPrediction", "Decision", "Detection", "Evidence", "ImageNetPrior",
           "LandmarkClassifier", "OnnxDetector", "Recognizer", "Vote", "ablation_configs", "decide",
           "detector_decision", "distractor_scores", "grade_a", "grade_b", "knn_vote", "prior_decisions",
           "tiered_scores"]
