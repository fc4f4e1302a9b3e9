"""``DescriptorNet``: backbone -> pooling -> optional FC+BN embedding -> L2-normalised descriptor."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import LandmarkError
from ..utils.config import ConfigError, merge, to_dict
from ..utils.io import atomic_path
from . import functional as LF
from .backbones import Backbone, create_backbone
from .config import ModelConfig
from .pooling import ATTENTION_TAPS, ResidualAttention, make_pooling


class DescriptorNet(nn.Module):
    """Global descriptor network. ``forward`` takes normalised images, returns unit-norm rows.

    With an ``attention`` branch (aGeM, :class:`~.pooling.ResidualAttention`) the backbone also gives
    the inputs of the stages ``attention.taps``, whose masks re-weight the final map before pooling."""

    def __init__(
        self,
        backbone: Backbone,
        pooling: nn.Module,
        embedding_dim: int | None = None,
        attention: ResidualAttention | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.pool = pooling
        self.attention = attention  # a submodule only when present: other checkpoints keep their keys
        if embedding_dim:
            self.embedding: nn.Module = nn.Sequential(
                nn.Linear(backbone.out_channels, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim)
            )
            self.dim = embedding_dim
        else:
            self.embedding = nn.Identity()
            self.dim = backbone.out_channels

    @property
    def preprocessing(self):
        return self.backbone.preprocessing

    @property
    def taps(self) -> tuple[int, ...]:
        """The backbone stages whose inputs the network reads besides its final map (aGeM's)."""
        return self.attention.taps if self.attention is not None else ()

    def features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The backbone's final map and its maps at :attr:`taps`, in one pass."""
        *tapped, fmap = self.backbone.forward_taps(x, self.taps)
        return fmap, tapped

    def attend(self, fmap: Tensor, tapped: Sequence[Tensor] = ()) -> Tensor:
        """The final map as pooled: re-weighted by the attention branch where there is one."""
        return self.attention(fmap, list(tapped)) if self.attention is not None else fmap

    def pooled(self, x: Tensor) -> Tensor:
        """Pooled backbone features before the embedding (``B x C``)."""
        return self.pool(self.attend(*self.features(x)))

    def forward(self, x: Tensor) -> Tensor:
        return LF.l2n(self.embedding(self.pooled(x)))

    def describe(self, fmap: Tensor, tapped: Sequence[Tensor] = ()) -> Tensor:
        """The descriptor of a backbone feature map and its :attr:`taps` maps (``forward`` is
        ``describe(*features(x))``)."""
        return LF.l2n(self.embedding(self.pool(self.attend(fmap, tapped))))

    def regional(self, fmap: Tensor, levels: int, tapped: Sequence[Tensor] = ()) -> Tensor:
        """Descriptors of the R-MAC-style regions of a feature map (:func:`~.functional.region_windows`):
        ``B x R x dim``, each pooled, embedded and L2-normalised as the global descriptor is."""
        fmap = self.attend(fmap, tapped)
        windows = LF.region_windows(fmap.shape[-2], fmap.shape[-1], levels)
        if not windows:
            return fmap.new_zeros((fmap.shape[0], 0, self.dim))
        pooled = torch.stack([self.pool(fmap[..., a:b, c:d]) for a, b, c, d in windows], dim=1)
        emb = self.embedding(pooled.flatten(0, 1)).view(fmap.shape[0], len(windows), -1)
        return LF.l2n(emb)


def attention_branch(backbone: Backbone, count: int = ATTENTION_TAPS) -> ResidualAttention:
    """aGeM's attention units on the inputs of ``backbone``'s last ``count`` stages (their channels
    read from one small forward pass)."""
    try:
        n = len(backbone.stages())
    except NotImplementedError:
        raise ConfigError(f"model.pooling=agem needs a backbone split into stages; {backbone.name} is not") from None
    taps = tuple(range(max(1, n - count), n))
    with torch.no_grad():
        was = backbone.training
        *tapped, _ = backbone.eval().forward_taps(torch.zeros(1, 3, 64, 64), taps)
        backbone.train(was)
    return ResidualAttention(taps, tuple(int(t.shape[1]) for t in tapped))


def build_model(cfg: ModelConfig, pretrained: bool = True) -> DescriptorNet:
    """Build the network a :class:`ModelConfig` describes, loading its checkpoint if it names one."""
    if cfg.checkpoint:
        net, _ = load_checkpoint(cfg.checkpoint)
        return net
    backbone = create_backbone(cfg.backbone, pretrained=pretrained)
    pool = make_pooling(cfg.pooling, p=cfg.gem_p, trainable=cfg.gem_trainable)
    attention = attention_branch(backbone) if cfg.pooling.lower() == "agem" else None
    return DescriptorNet(backbone, pool, cfg.embedding_dim, attention)


def save_checkpoint(
    path: str | Path, net: DescriptorNet, cfg: ModelConfig, extra: dict[str, Any] | None = None
) -> None:
    """Write ``{"model_config", "state_dict", ...extra}`` atomically."""
    payload = {"model_config": to_dict(cfg) | {"checkpoint": None}, "state_dict": net.state_dict()}
    payload.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


class CheckpointError(LandmarkError, ValueError):
    """A file given as a model checkpoint that is not one :func:`save_checkpoint` wrote."""


def read_checkpoint(path: str | Path, required: Sequence[str] = ("model_config", "state_dict")) -> dict[str, Any]:
    """The payload of a checkpoint written by :func:`save_checkpoint` (``landmark train``'s model.pt),
    holding the ``required`` keys (those of the network by default)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle and zip errors of all kinds for a file that is something else
        raise CheckpointError(f"{path}: not a readable model checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in required):
        raise CheckpointError(f"{path}: not a landmark checkpoint (expected keys {', '.join(required)})")
    return payload


def load_checkpoint(path: str | Path) -> tuple[DescriptorNet, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns the network and the payload."""
    payload = read_checkpoint(path)
    cfg = merge(ModelConfig(), payload["model_config"])
    net = build_model(cfg, pretrained=False)
    net.load_state_dict(payload["state_dict"], strict=True)
    return net, payload


def file_digest(path: str | Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]
