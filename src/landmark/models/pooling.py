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


class AttentionUnit(nn.Module):
    """One attention unit of aGeM: a feature map (``B x C x h x w``) to a ``B x 1 x h x w`` mask in [0, 1]."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(x))


class ResidualAttention(nn.Module):
    """The attention branch of attention-aware GeM (aGeM; the Stanford report §3.3): attention units on
    the inputs of backbone stages ``taps`` (three by default: Att1, Att2_1, Att2_2) whose masks
    re-weight the final feature map by attention residual learning, ``(1 + M) * F``
    (:func:`~landmark.models.functional.residual_attention`), before GeM."""

    def __init__(self, taps: tuple[int, ...], channels: tuple[int, ...], reduction: int = 8):
        super().__init__()
        if len(taps) != len(channels) or not taps:
            raise ValueError(f"one channel count per tap, got taps {taps} and channels {channels}")
        self.taps = tuple(taps)
        self.units = nn.ModuleList(AttentionUnit(c, reduction) for c in channels)

    def forward(self, fmap: Tensor, tapped: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        return LF.residual_attention(fmap, [unit(t) for unit, t in zip(self.units, tapped)])


POOLINGS = {"gem": GeM, "mac": MAC, "spoc": SPoC, "agem": GeM}  # agem: GeM after the attention branch (net.py)
ATTENTION_TAPS = 3  # aGeM: attention units on the inputs of the backbone's last 3 stages


def make_pooling(name: str, p: float = 3.0, trainable: bool = False) -> nn.Module:
    """Build a pooling layer by name (``gem``, ``mac``, ``spoc``; ``agem``: its GeM, the attention
    branch being the network's, see :func:`landmark.models.net.build_model`)."""
    key = name.lower()
    if key not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; choose one of {sorted(POOLINGS)}")
    if key in ("gem", "agem"):
        return GeM(p=p, trainable=trainable)
    return POOLINGS[key]()
