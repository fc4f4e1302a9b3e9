"""Training: fine-tune the global descriptor (GeM + FC-512) with ArcFace and the papers' alternatives."""

from .config import TRAIN_PRESETS, HeadConfig, OptimConfig, TrainConfig, TrainDataConfig, load_train_config
from .loop import FitResult, train

__all__ = ["TRAIN_PRESETS", "FitResult", "HeadConfig", "OptimConfig", "TrainConfig", "TrainDataConfig",
           "load_train_config", "train"]
