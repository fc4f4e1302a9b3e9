"""Models: backbones with offline weights, pooling layers, and the descriptor network."""

from .backbones import REGISTRY, Backbone, BackboneSpec, Preprocessing, WeightsUnavailable, create_backbone
from .net import CheckpointError, DescriptorNet, build_model, load_checkpoint, read_checkpoint, save_checkpoint
from .pooling import MAC, GeM, SPoC, make_pooling

__all__ = [
    "REGISTRY", "Backbone", "BackboneSpec", "Preprocessing", "WeightsUnavailable", "create_backbone",
    "CheckpointError", "DescriptorNet", "build_model", "load_checkpoint", "read_checkpoint", "save_checkpoint", "GeM", "MAC", "SPoC", "make_pooling",
]
