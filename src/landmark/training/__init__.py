"""Training: fine-tune the global descriptor (GeM + FC-512) with ArcFace and the papers' alternatives.

Names are imported from their submodule on first use (landmark.utils.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .config import TRAIN_PRESETS, HeadConfig, OptimConfig, TrainConfig, TrainDataConfig, load_train_config
    from .loop import FitResult, train

_EXPORTS = {
    "TRAIN_PRESETS": "config",
    "FitResult": "loop",
    "HeadConfig": "config",
    "OptimConfig": "config",
    "TrainConfig": "config",
    "TrainDataConfig": "config",
    "load_train_config": "config",
    "train": "loop",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
