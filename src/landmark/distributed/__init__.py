"""Scale-out: extraction on a Ray cluster (multi-GPU training is torch DDP, in ``landmark.training``)."""

from .extract import RayConfig, RayUnavailable, extract_distributed

__all__ = ["RayConfig", "RayUnavailable", "extract_distributed"]
