"""Thin ``nn.Module`` wrappers over :mod:`landmark.models.functional`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import functional as LF


class MAC(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return LF.mac(x)


class SPoC(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return LF.spoc(x)


class GeM(nn.Module):
    """Generalised-mean pooling with exponent ``p``, trainable or fixed, shared or per channel."""

    def __init__(self, p: float = 3.0, trainable: bool = True, channels: int | None = None, eps: float = 1e-6):
        super().__init__()
        init = torch.full((channels,), float(p)) if channels else torch.tensor(float(p))
        if trainable:
            self.p = nn.Parameter(init)
        else:
            self.register_buffer("p", init)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return LF.gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        p = self.p.detach()
        shown = f"{p.item():.4f}" if p.ndim == 0 else f"[{p.numel()} values, mean {p.mean().item():.4f}]"
        return f"p={shown}, trainable={isinstance(self.p, nn.Parameter)}"


POOLINGS = {"gem": GeM, "mac": MAC, "spoc": SPoC}


def make_pooling(name: str, p: float = 3.0, trainable: bool = False) -> nn.Module:
    """Build a pooling layer by name (``gem``, ``mac`` or ``spoc``)."""
    key = name.lower()
    if key not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; choose one of {sorted(POOLINGS)}")
    if key == "gem":
        return GeM(p=p, trainable=trainable)
    return POOLINGS[key]()
