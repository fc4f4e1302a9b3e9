"""Evaluation: Kaggle submission files, the ``evaluate`` run, ablations and the quality suite (the
metrics themselves, GAP and mAP@k, are :mod:`landmark.metrics`, which training and calibration use too).

Names are imported from their submodule on first use (landmark.utils.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .submission import read_recognition_csv, read_retrieval_csv, write_recognition_csv, write_retrieval_csv

_EXPORTS = {
    "read_recognition_csv": "submission",
    "read_retrieval_csv": "submission",
    "write_recognition_csv": "submission",
    "write_retrieval_csv": "submission",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
