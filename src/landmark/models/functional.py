"""Pure tensor functions behind the pooling and normalisation modules.

Every function takes a feature map ``x`` of shape ``B x C x H x W`` (or a matrix ``B x D`` for
:func:`l2n`) and returns ``B x C``; none of them holds state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def l2n(x: Tensor, eps: float = 1e-6) -> Tensor:
    """L2-normalise the rows of ``x``."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps)


def mac(x: Tensor) -> Tensor:
    """Maximum activation of convolutions: spatial max per channel."""
    return torch.amax(x, dim=(-2, -1))


def spoc(x: Tensor) -> Tensor:
    """Sum-pooled convolutional features (as a mean, which differs only by a constant)."""
    return torch.mean(x, dim=(-2, -1))


def gem(x: Tensor, p: Tensor | float = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalised mean: ``(mean(x^p))^(1/p)`` per channel, ``x`` clamped to ``eps`` first.

    ``p`` is a scalar or a ``C``-vector (one exponent per channel). ``p = 1`` is SPoC and
    ``p -> inf`` approaches MAC.
    """
    p_t = torch.as_tensor(p, dtype=x.dtype, device=x.device)
    if p_t.ndim == 1:
        p_b = p_t.view(1, -1, 1, 1)
        return torch.mean(x.clamp(min=eps).pow(p_b), dim=(-2, -1)).pow(1.0 / p_t.view(1, -1))
    return torch.mean(x.clamp(min=eps).pow(p_t), dim=(-2, -1)).pow(1.0 / p_t)


def residual_attention(x: Tensor, masks: list[Tensor]) -> Tensor:
    """Attention residual learning (Wang et al., CVPR 2017): ``(1 + M) * x``, ``M`` the mean of the
    ``B x 1 x h x w`` attention ``masks`` (in [0, 1]) resized to ``x``'s grid. A uniform mask scales
    every position alike, so any pooling then L2-normalised gives what it gives without attention."""
    size = x.shape[-2:]
    resized = [
        m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in masks
    ]
    return x * (1.0 + torch.stack(resized).mean(dim=0))


def region_windows(height: int, width: int, levels: int) -> list[tuple[int, int, int, int]]:
    """R-MAC-style regions of a ``height x width`` feature map, as ``(y0, y1, x0, x1)`` index windows.

    Level ``l`` (2 .. ``levels``) tiles the map with ``l x l`` windows whose sides are ``2 / (l + 1)``
    of the map's, evenly spaced so that neighbours overlap by half; level 1 would be the whole map,
    which the global descriptor already is, so ``levels <= 1`` gives no region. Every window holds
    at least one cell; there are always ``sum(l * l)`` of them (on a map too small to tell them apart
    some repeat), so every photo has as many regions.
    """
    out: list[tuple[int, int, int, int]] = []
    for level in range(2, levels + 1):
        size = 2.0 / (level + 1)
        step = (1.0 - size) / (level - 1)
        for i in range(level):
            for j in range(level):
                y0, x0 = i * step, j * step
                a, c = min(int(round(y0 * height)), height - 1), min(int(round(x0 * width)), width - 1)
                win = (
                    a,
                    min(height, max(a + 1, int(round((y0 + size) * height)))),
                    c,
                    min(width, max(c + 1, int(round((x0 + size) * width)))),
                )
                out.append(win)
    return out


def region_count(levels: int) -> int:
    """How many regions :func:`region_windows` makes for ``levels``."""
    return sum(level * level for level in range(2, levels + 1))


def resize_long_side(x: Tensor, long_side: int, multiple: int = 1) -> Tensor:
    """Bilinearly resize a ``B x C x H x W`` batch so its long side is ``long_side``.

    The short side keeps the aspect ratio and is rounded to ``multiple`` (at least ``multiple``).
    """
    h, w = x.shape[-2:]
    th, tw = target_shape(h, w, long_side, multiple)
    if (th, tw) == (h, w):
        return x
    return F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)


def target_shape(height: int, width: int, long_side: int, multiple: int = 1) -> tuple[int, int]:
    """``(h, w)`` with the long side ``long_side`` and both sides rounded to ``multiple``."""
    scale = long_side / max(height, width)

    def rnd(v: float) -> int:
        return max(multiple, int(round(v / multiple)) * multiple)

    return rnd(height * scale), rnd(width * scale)


def cosine_logits(x: Tensor, weight: Tensor) -> Tensor:
    """Cosine similarity of each row of ``x`` (B x D) with each row of ``weight`` (C x D)."""
    return l2n(x) @ l2n(weight).t()


def arc_margin(cos: Tensor, labels: Tensor, scale: float, margin: Tensor | float, easy_margin: bool = False) -> Tensor:
    """ArcFace logits: ``s * cos(theta + m)`` for the true class, ``s * cos(theta)`` elsewhere.

    ``margin`` is a scalar or a per-sample vector (dynamic margins). Past ``theta = pi - m`` the
    penalty falls back to the CosFace-style ``cos(theta) - m sin(m)`` so logits stay monotone in theta.
    """
    m = torch.as_tensor(margin, dtype=cos.dtype, device=cos.device)
    if m.ndim == 1:
        m = m.view(-1)
    target = cos.gather(1, labels.view(-1, 1)).squeeze(1).clamp(-1 + 1e-7, 1 - 1e-7)
    sin = torch.sqrt(1.0 - target * target)
    cos_m, sin_m = torch.cos(m), torch.sin(m)
    shifted = target * cos_m - sin * sin_m
    if easy_margin:
        shifted = torch.where(target > 0, shifted, target)
    else:
        shifted = torch.where(target > torch.cos(torch.pi - m), shifted, target - torch.sin(torch.pi - m) * m)
    out = cos.scatter(1, labels.view(-1, 1), shifted.view(-1, 1).to(cos.dtype))
    return out * scale


def cos_margin(cos: Tensor, labels: Tensor, scale: float, margin: float) -> Tensor:
    """CosFace logits: ``s * (cos(theta) - m)`` for the true class, ``s * cos(theta)`` elsewhere."""
    onehot = torch.zeros_like(cos).scatter_(1, labels.view(-1, 1), 1.0)
    return scale * (cos - margin * onehot)
