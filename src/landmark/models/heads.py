"""Classification heads used for training descriptors (thin modules over the margin functions).

Every head maps an embedding batch ``B x D`` (and, for margin heads, the labels) to logits
``B x C``. At inference only the embedding is used; the heads also serve as classifiers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from . import functional as LF


class CosineHead(nn.Module):
    """Class centres on the unit sphere; ``logits(x)`` are cosines (no margin)."""

    def __init__(self, dim: int, classes: int, subcenters: int = 1):
        super().__init__()
        self.classes, self.subcenters = classes, subcenters
        self.weight = nn.Parameter(torch.empty(classes * subcenters, dim))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(dim))

    def cosine(self, x: Tensor) -> Tensor:
        cos = LF.cosine_logits(x, self.weight)
        if self.subcenters > 1:  # sub-center ArcFace: the nearest of k centres speaks for the class
            cos = cos.view(-1, self.classes, self.subcenters).amax(dim=2)
        return cos

    def logits(self, x: Tensor) -> Tensor:
        return self.cosine(x)


class ArcFace(CosineHead):
    """Additive angular margin (Deng et al.); optional sub-centres and per-class dynamic margins."""

    class_margins: Tensor  # a buffer (empty: one margin for all)

    def __init__(
        self,
        dim: int,
        classes: int,
        scale: float = 30.0,
        margin: float = 0.3,
        subcenters: int = 1,
        class_margins: Tensor | None = None,
    ):
        super().__init__(dim, classes, subcenters)
        self.scale, self.margin = scale, margin
        self.register_buffer("class_margins", class_margins if class_margins is not None else torch.empty(0))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        m = self.class_margins[labels] if self.class_margins.numel() else self.margin
        return LF.arc_margin(self.cosine(x).float(), labels, self.scale, m)

    def logits(self, x: Tensor) -> Tensor:
        return self.scale * self.cosine(x)


class CosFace(CosineHead):
    """Large margin cosine loss (Wang et al.)."""

    def __init__(self, dim: int, classes: int, scale: float = 30.0, margin: float = 0.35):
        super().__init__(dim, classes)
        self.scale, self.margin = scale, margin

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        return LF.cos_margin(self.cosine(x).float(), labels, self.scale, self.margin)

    def logits(self, x: Tensor) -> Tensor:
        return self.scale * self.cosine(x)


class LinearHead(nn.Module):
    """A plain linear classifier (softmax cross-entropy or one-vs-all BCE)."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.fc(x)

    def logits(self, x: Tensor) -> Tensor:
        return self.fc(x)


def dynamic_margins(counts: Tensor, low: float = 0.05, high: float = 0.5, power: float = -0.25) -> Tensor:
    """Per-class margins growing as classes get rarer: ``n^power`` mapped linearly onto [low, high]
    (the GLR 2020 winners' recipe)."""
    f = counts.float().clamp(min=1).pow(power)
    span = (f.max() - f.min()).clamp(min=1e-12)
    return low + (high - low) * (f - f.min()) / span


class HeadSettings(Protocol):
    """What making a head reads (``landmark.training.config.HeadConfig`` has it)."""

    scale: float
    margin: float
    subcenters: int
    dynamic_margin: bool
    margin_low: float
    margin_high: float


@dataclass(frozen=True)
class HeadKind:
    """A kind of head (``head.kind``, registered in :data:`landmark.models.config.HEADS`): how it is made
    for ``dim``-d embeddings and classes of ``counts`` photos, which training loss scores it
    (:data:`landmark.training.config.LOSSES`), and how a classifier reads it: a linear head reads the
    unit descriptor scaled by sqrt(D) (a batch-normalised embedding's norm), a cosine one its direction."""

    make: Callable[[int, Sequence[int], HeadSettings], nn.Module | None]
    loss: str
    linear: bool = False
    sigmoid: bool = False  # probabilities: sigmoid of each logit (one-vs-all), else softmax


def _arcface(subcenters: bool) -> Callable[[int, Sequence[int], HeadSettings], nn.Module]:
    def make(dim: int, counts: Sequence[int], h: HeadSettings) -> nn.Module:
        margins = dynamic_margins(torch.tensor(counts), h.margin_low, h.margin_high) if h.dynamic_margin else None
        return ArcFace(
            dim, len(counts), h.scale, h.margin, subcenters=h.subcenters if subcenters else 1, class_margins=margins
        )

    return make


ARCFACE = HeadKind(_arcface(subcenters=False), "cross_entropy")
SUBCENTER_ARCFACE = HeadKind(_arcface(subcenters=True), "cross_entropy")
COSFACE = HeadKind(lambda dim, counts, h: CosFace(dim, len(counts), h.scale, h.margin), "cross_entropy")
SOFTMAX = HeadKind(lambda dim, counts, h: LinearHead(dim, len(counts)), "cross_entropy", linear=True)
BCE = HeadKind(lambda dim, counts, h: LinearHead(dim, len(counts)), "bce", linear=True, sigmoid=True)
NPAIRS = HeadKind(lambda dim, counts, h: None, "npairs")  # no head: the loss reads the embeddings
