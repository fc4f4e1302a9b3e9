"""The descriptor network's config (:class:`ModelConfig`): backbone, pooling, embedding, checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..utils.config import ConfigError
from ..utils.registry import Registry


@dataclass
class ModelConfig:
    """The descriptor network: backbone -> pooling -> optional FC+BN embedding -> L2."""

    backbone: str = "tf_efficientnet_lite2"
    pooling: str = "gem"
    gem_p: float = 3.0
    gem_trainable: bool = False
    embedding_dim: int | None = None
    checkpoint: str | None = None  # a trained checkpoint (``landmark train``); None = ImageNet weights


# the offline backbones of landmark.models.backbones.REGISTRY and the poolings of landmark.models.pooling
# (tests/models/test_config.py keeps them equal)
BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "mobilenet_v2")
POOLINGS = ("gem", "mac", "spoc", "agem")


def check_models(models: Sequence[ModelConfig], where: str) -> None:
    """A :class:`ConfigError` for a model whose backbone or pooling does not exist."""
    for m in models:
        if m.backbone not in BACKBONES and not m.backbone.startswith("timm/"):
            raise ConfigError(
                f"{where}.backbone: unknown backbone {m.backbone!r}; choose one of {sorted(BACKBONES)} "
                "or 'timm/<model name>' (timm hub weights: needs internet once)"
            )
        if m.pooling.lower() not in POOLINGS:
            raise ConfigError(f"{where}.pooling: expected one of {sorted(POOLINGS)}, got {m.pooling!r}")


# head.kind of training and of a checkpoint's classifier (landmark.models.heads.HeadKind)
HEADS = Registry(
    "head.kind",
    {
        name: f"landmark.models.heads:{name.upper()}"
        for name in ("arcface", "subcenter_arcface", "cosface", "softmax", "bce", "npairs")
    },
)
