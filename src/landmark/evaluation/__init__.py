"""Evaluation: GAP, accuracy, mAP@k, Kaggle submission files, and the ``evaluate`` run."""

from .metrics import (accuracy, average_precision_at_k, global_average_precision, mean_average_precision_at_k,
                      precision_at_k)
from .submission import read_recognition_csv, read_retrieval_csv, write_recognition_csv, write_retrieval_csv

__all__ = ["accuracy", "average_precision_at_k", "global_average_precision", "mean_average_precision_at_k",
           "precision_at_k", "read_recognition_csv", "read_retrieval_csv", "write_recognition_csv",
           "write_retrieval_csv"]
