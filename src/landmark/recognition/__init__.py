"""Recognition: kNN voting over labelled photos (later: classifier, non-landmark filters, grading)."""

from .knn import Vote, knn_vote, similarity_to_confidence

__all__ = ["Vote", "knn_vote", "similarity_to_confidence"]
