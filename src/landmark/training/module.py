"""The network as training sees it: the descriptor net plus its head, frozen stages, cached features, and
the head initialised from the training photos' features."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import ImageRecord
from ..features.whitening import learn_whitening
from ..models import functional as LF
from ..models.config import HEADS
from ..models.heads import CosineHead
from ..models.net import DescriptorNet
from ..utils.config import ConfigError
from ..utils.progress import progress_bar
from .config import LOSSES, TrainConfig
from .data import AugmentedPhotos, collate_skip_none, train_transform

log = logging.getLogger(__name__)


def make_head(cfg: TrainConfig, dim: int, counts: Sequence[int]) -> nn.Module | None:
    """The head of ``head.kind`` (:data:`landmark.models.config.HEADS`) for classes of ``counts`` photos."""
    return HEADS[cfg.head.kind].make(dim, counts, cfg.head)


class TrainModule(nn.Module):
    """Descriptor network + head; ``forward(inputs, labels) -> (loss, embeddings)``.

    ``inputs`` are images, or the frozen stages' output when training on cached crops.
    """

    def __init__(self, net: DescriptorNet, head: nn.Module | None, cfg: TrainConfig):
        super().__init__()
        self.net, self.head, self.cfg = net, head, cfg
        self.frozen = cfg.freeze_stages
        if self.frozen and any(t < self.frozen for t in net.taps):
            raise ConfigError(
                f"model.pooling=agem reads the inputs of backbone stages {list(net.taps)}; with "
                f"freeze_stages={self.frozen} some are frozen (or cached): set freeze_stages <= "
                f"{min(net.taps)}"
            )
        try:
            stages = net.backbone.stages() if self.frozen else None
        except NotImplementedError:
            raise ConfigError(
                f"freeze_stages={self.frozen}: backbone {net.backbone.name} cannot be split into stages "
                "(set freeze_stages=0 and cache_views=0)"
            ) from None
        self.prefix = nn.Sequential(*stages[: self.frozen]) if stages else None
        self.suffix = nn.Sequential(*stages[self.frozen :]) if stages else None
        frozen = list(self.prefix.parameters()) if self.prefix is not None else []
        if net.backbone.head is not None:  # the ImageNet classifier plays no part in the loss
            frozen += list(net.backbone.head.parameters())
        for p in frozen:
            p.requires_grad_(False)
        if self.prefix is not None:
            self.prefix.eval()  # from the start: caching crops must not touch its BatchNorm statistics

    def train(self, mode: bool = True) -> TrainModule:
        super().train(mode)
        if self.prefix is not None:
            self.prefix.eval()  # frozen BatchNorm keeps its ImageNet statistics
        return self

    def frozen_features(self, x: Tensor) -> Tensor:
        if self.prefix is None:
            return x
        with torch.no_grad():
            return self.prefix(x)

    def pooled(self, fmap: Tensor, cached: bool) -> Tensor:
        """Pooled backbone features (before the embedding) of images or cached frozen features."""
        taps = self.net.taps
        if self.suffix is None:
            fmap, tapped = self.net.features(fmap)
        elif not taps:
            fmap, tapped = self.suffix(fmap if cached else self.frozen_features(fmap)), []
        else:  # the attention branch reads maps of the trained stages (checked: taps >= freeze_stages)
            *tapped, fmap = self.net.backbone.forward_taps(
                fmap if cached else self.frozen_features(fmap), taps, start=self.frozen
            )
        return self.net.pool(self.net.attend(fmap, tapped))

    def embed_features(self, fmap: Tensor, cached: bool) -> tuple[Tensor, Tensor]:
        """(pre-normalisation embedding, unit embedding) from images or cached frozen features."""
        z = self.net.embedding(self.pooled(fmap, cached))
        return z, LF.l2n(z)

    def forward(self, inputs: Tensor, labels: Tensor, cached: bool = False) -> tuple[Tensor, Tensor]:
        z, emb = self.embed_features(inputs, cached)
        h = self.cfg.head
        logits = self.head(z, labels) if self.head is not None else None
        return LOSSES[HEADS[h.kind].loss](logits, emb, labels, h), emb


@torch.no_grad()
def initialise_from_features(
    module: TrainModule, pooled: Tensor, labels: Tensor, embedding: bool = True
) -> dict[str, Any]:
    """Start training from the pretrained descriptor instead of random layers.

    ``pooled`` are the pooled features (``N x C``) of training crops and ``labels`` their classes.
    An FC+BN embedding becomes the PCA of those features (the BN scale undoes the batch
    standardisation, so the layer outputs the centred PCA coordinates, not a whitening that
    amplifies noisy directions), and the centres of a cosine head (ArcFace, CosFace) become the
    unit class means of the resulting embeddings: the first steps then refine a working
    descriptor rather than recover from a random projection. ``embedding=False`` keeps the
    embedding as it is (a trained checkpoint's) and sets the head only. Returns what was set, for the log.
    """
    done: dict[str, Any] = {}
    pooled = pooled.float().cpu()
    emb = module.net.embedding
    if isinstance(emb, nn.Sequential) and embedding:
        lin, bn = cast(nn.Linear, emb[0]), cast(nn.BatchNorm1d, emb[1])  # DescriptorNet's FC+BN embedding
        dim = lin.out_features
        if len(pooled) <= dim:
            raise ValueError(
                f"initialising a {dim}-d embedding by PCA needs more than {dim} training crops, "
                f"got {len(pooled)}; use init=random or more photos"
            )
        w = learn_whitening(pooled.double().numpy(), dim, power=0.0)
        eig = torch.from_numpy(w.eigenvalues).float().clamp_min(1e-12)
        dev = lin.weight.device
        lin.weight.copy_(torch.from_numpy(w.projection).float().to(dev))
        assert bn.running_mean is not None and bn.running_var is not None  # tracked: BatchNorm1d's default
        bn.running_mean.copy_(torch.from_numpy(w.projection @ w.mean).float().to(dev))
        bn.running_var.copy_(eig.to(dev))
        bn.weight.copy_(eig.sqrt().to(dev))
        bn.bias.zero_()
        done["embedding"] = f"PCA of {len(pooled)} crops"
    head = module.head
    if isinstance(head, CosineHead):
        was = emb.training
        emb.eval()
        z = LF.l2n(emb(pooled.to(next(module.parameters()).device))).cpu()
        emb.train(was)
        centres = head.weight.detach().cpu().clone().view(head.classes, head.subcenters, -1)
        seen = 0
        for c in labels.unique().tolist():
            m = LF.l2n(z[labels == c].mean(0, keepdim=True))[0]
            # sub-centres start around the class mean, apart by their random init
            centres[c] = LF.l2n(m + 0.1 * LF.l2n(centres[c])) if head.subcenters > 1 else m
            seen += 1
        head.weight.copy_(centres.view_as(head.weight).to(head.weight.device))
        done["head"] = f"class means of {seen}/{head.classes} classes"
    return done


def pooled_training_features(
    module: TrainModule,
    records: Sequence[ImageRecord],
    labels: Sequence[int],
    cfg: TrainConfig,
    cached: Tensor | None,
    device: torch.device,
    progress: bool | None,
) -> tuple[Tensor, Tensor]:
    """Pooled features of (at most ``cfg.init_photos``) training photos: their cached crops, or
    augmented crops (one per photo, more passes while a PCA of the embedding size lacks crops)."""
    rng = np.random.default_rng(cfg.seed)
    idx = (
        np.sort(rng.permutation(len(records))[: cfg.init_photos])
        if len(records) > cfg.init_photos
        else np.arange(len(records))
    )
    passes = 1 if cached is not None else max(1, math.ceil(((cfg.model.embedding_dim or 0) + 1) / max(1, len(idx))))
    module.eval()
    feats, labs = [], []
    with (
        torch.no_grad(),
        progress_bar("initialise from pretrained features", total=len(idx) * passes, enabled=progress) as bar,
    ):
        if cached is not None:
            for i in range(0, len(idx), 64):
                sel = torch.from_numpy(idx[i : i + 64])
                x = cached[sel].flatten(0, 1).to(device).float()  # every cached crop of these photos
                feats.append(module.pooled(x, cached=True).float().cpu())
                labs.append(torch.tensor([labels[j] for j in sel.tolist()]).repeat_interleave(cached.shape[1]))
                bar.advance(len(sel))
        else:
            prep = module.net.preprocessing
            ds = AugmentedPhotos(
                [records[j] for j in idx],
                [labels[j] for j in idx],
                train_transform(cfg.data, prep.mean, prep.std),
                draft_size=cfg.data.image_size * 2,
            )
            for _ in range(passes):
                for b in DataLoader(
                    ds, batch_size=cfg.optim.batch_size, num_workers=cfg.data.num_workers, collate_fn=collate_skip_none
                ):
                    if b is None:
                        continue
                    x, y = b
                    feats.append(module.pooled(x.to(device), cached=False).float().cpu())
                    labs.append(y)
                    bar.advance(len(y))
    module.train()
    return torch.cat(feats), torch.cat(labs)
