"""Classification heads used for training descriptors (thin modules over the margin functions).

Every head maps an embedding batch ``B x D`` (and, for margin heads, the labels) to logits
``B x C``. At inference only the embedding is used; the heads also serve as classifiers.
"""

from __future__ import annotations

import math

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
        if self.subcenters > 1:   # sub-center ArcFace: the nearest of k centres speaks for the class
            cos = cos.view(-1, self.classes, self.subcenters).amax(dim=2)
        return cos

    def logits(self, x: Tensor) -> Tensor:
        return self.cosine(x)


class ArcFace(CosineHead):
    """Additive angular margin (Deng et al.); optional sub-centres and per-class dynamic margins."""

    def __init__(self, dim: int, classes: int, scale: float = 30.0, margin: float = 0.3, subcenters: int = 1,
                 class_margins: Tensor | None = None):
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
