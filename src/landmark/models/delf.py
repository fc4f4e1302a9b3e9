"""DELF attentive local features (Noh et al., ICCV 2017; the Stanford GLR19 report §3.1): the network.

Dense features ``f_n`` are the output of a mid-level stage of a (frozen) backbone - by default the last
stage at stride 16, like DELF's ResNet50 ``conv4_x``. A small attention head scores each location,

    alpha(f_n) = softplus(conv1x1(relu(conv1x1(f_n))))

and is trained with image-level labels only: a linear classifier reads the attention-weighted mean of
the features, ``y = W (1/N sum_n alpha(f_n) f_n)``, under the cross-entropy loss. The backbone never
changes, so training reads cached feature maps (:mod:`landmark.training.delf`). Keypoint selection,
PCA and the image pyramid are :mod:`landmark.features.delf`'s.

A DELF checkpoint (:func:`save_delf` / :func:`load_delf`) holds the backbone's name and stage, the
head's weights, the PCA learned on training photos' features and the pyramid scales: tensors and
plain values only (read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import LandmarkError
from ..utils.io import atomic_path
from .backbones import Backbone, create_backbone

FORMAT = "landmark-delf/1"


class DelfCheckpointError(LandmarkError, ValueError):
    """A DELF checkpoint is missing or is not one."""


def attention_pool(features: Tensor, scores: Tensor) -> Tensor:
    """``1/N sum_n scores_n * features_n`` over the locations: ``B x C x H x W``, ``B x 1 x H x W`` -> ``B x C``."""
    return (features * scores).mean(dim=(2, 3))


class AttentionHead(nn.Module):
    """DELF's attention: two 1x1 convolutions, softplus score (``B x C x H x W`` -> ``B x 1 x H x W``, >= 0)."""

    def __init__(self, channels: int, hidden: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, features: Tensor) -> Tensor:
        return F.softplus(self.conv2(F.relu(self.conv1(features))))


class DelfHead(nn.Module):
    """Attention plus the classifier it is trained through: ``forward(features) -> (logits, scores)``."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 256):
        super().__init__()
        self.attention = AttentionHead(channels, hidden)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.attention(features)
        return self.classifier(attention_pool(features, scores)), scores


def stage_strides(backbone: Backbone, size: int = 64) -> list[int]:
    """Output stride of each of ``backbone.stages()`` (measured on a ``size`` x ``size`` input)."""
    x = torch.zeros(1, 3, size, size)
    strides = []
    with torch.no_grad():
        for stage in backbone.stages():
            x = stage(x)
            strides.append(round(size / x.shape[-1]))
    return strides


def default_stage(backbone: Backbone, stride: int = 16) -> int:
    """How many stages give DELF's features: up to the last stage at output stride ``stride`` (ResNet ``conv4_x``)."""
    strides = stage_strides(backbone)
    at = [i for i, s in enumerate(strides) if s == stride]
    if not at:
        raise DelfCheckpointError(f"backbone {backbone.name!r} has no stage at stride {stride} (strides {strides})")
    return at[-1] + 1


class DelfNet(nn.Module):
    """A frozen backbone cut after ``stage`` stages, and the attention head: ``forward(x) -> (features, scores)``."""

    def __init__(self, backbone: Backbone, stage: int, head: DelfHead):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.stage = int(stage)
        self.head = head
        stride = stage_strides(backbone)[self.stage - 1]
        self.stride = int(stride)

    @property
    def channels(self) -> int:
        return int(self.head.classifier.in_features)

    def features(self, x: Tensor) -> Tensor:
        """The dense features ``B x C x h x w`` of normalised images ``x``."""
        return self.backbone.run_stages(x, 0, self.stage)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x)
        return f, self.head.attention(f)


@dataclass
class DelfCheckpoint:
    """What ``landmark train-delf`` writes (see the module docstring)."""

    backbone: str
    stage: int
    head: dict[str, Tensor]
    channels: int
    num_classes: int
    hidden: int
    pca: dict[str, Any]  # mean, projection, eigenvalues (tensors), power, shrinkage
    scales: tuple[float, ...] = (0.25, 0.3536, 0.5, 0.7071, 1.0)
    info: dict[str, Any] = field(default_factory=dict)  # training figures (plain values)

    def build(self, pretrained: bool = True) -> DelfNet:
        head = DelfHead(self.channels, self.num_classes, self.hidden)
        head.load_state_dict(self.head)
        return DelfNet(create_backbone(self.backbone, pretrained=pretrained), self.stage, head.eval())


def save_delf(path: str | Path, ckpt: DelfCheckpoint) -> None:
    """Write ``ckpt`` atomically."""
    blob = {
        "format": FORMAT,
        "backbone": ckpt.backbone,
        "stage": ckpt.stage,
        "head": ckpt.head,
        "channels": ckpt.channels,
        "num_classes": ckpt.num_classes,
        "hidden": ckpt.hidden,
        "pca": ckpt.pca,
        "scales": list(ckpt.scales),
        "info": ckpt.info,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_delf(path: str | Path | None) -> DelfCheckpoint:
    """Read a DELF checkpoint; a :class:`DelfCheckpointError` naming the file when it is missing or not one."""
    if not path:
        raise DelfCheckpointError(
            "local.kind=delf needs a trained DELF checkpoint: set local.checkpoint=PATH "
            "(make one with `landmark train-delf DATA --out DIR`)"
        )
    p = Path(path)
    if not p.is_file():
        raise DelfCheckpointError(
            f"DELF checkpoint {p} does not exist (make one with `landmark train-delf DATA --out DIR`)"
        )
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DelfCheckpointError(f"{p}: not a DELF checkpoint ({exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else None
        raise DelfCheckpointError(f"{p}: not a DELF checkpoint (format {found!r}, expected {FORMAT!r})")
    return DelfCheckpoint(
        blob["backbone"],
        int(blob["stage"]),
        blob["head"],
        int(blob["channels"]),
        int(blob["num_classes"]),
        int(blob["hidden"]),
        blob["pca"],
        tuple(blob["scales"]),
        blob.get("info", {}),
    )
