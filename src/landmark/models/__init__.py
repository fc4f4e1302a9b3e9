"""Models: backbones with offline weights, pooling layers, and the descriptor network.

Names are imported from their submodule on first use (landmark.utils.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .backbones import REGISTRY, Backbone, BackboneSpec, Preprocessing, WeightsUnavailable, create_backbone
    from .net import CheckpointError, DescriptorNet, build_model, load_checkpoint, read_checkpoint, save_checkpoint
    from .pooling import MAC, GeM, SPoC, make_pooling

_EXPORTS = {
    "REGISTRY": "backbones",
    "Backbone": "backbones",
    "BackboneSpec": "backbones",
    "Preprocessing": "backbones",
    "WeightsUnavailable": "backbones",
    "create_backbone": "backbones",
    "CheckpointError": "net",
    "DescriptorNet": "net",
    "build_model": "net",
    "load_checkpoint": "net",
    "read_checkpoint": "net",
    "save_checkpoint": "net",
    "GeM": "pooling",
    "MAC": "pooling",
    "SPoC": "pooling",
    "make_pooling": "pooling",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
