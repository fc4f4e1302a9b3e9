"""``landmark train-delf``: DELF's attention head trained with image-level labels only (Noh et al. 2017).

1. The backbone is frozen, so the dense features of its mid-level stage are computed once per training
   photo at each of ``sizes`` (square resizes: DELF's random rescaling draws one per batch) and cached
   in memory as float16.
2. The attention head and its linear classifier (:class:`landmark.models.delf.DelfHead`) are trained on
   the cached maps with the cross-entropy of the attention-weighted mean of the features (Adam); the
   accuracy on held-out photos of each landmark is reported per epoch.
3. The PCA of the descriptors is learned on the ``pca_per_photo`` highest-attention, L2-normalised
   features of every training photo (whitened or not: ``pca_power``).
4. ``OUT/delf.pt`` (:func:`landmark.models.delf.save_delf`) and ``OUT/metrics.json`` are written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DatasetError, ImageError, load_image, read_dataset
from ..data.manifests import ImageRecord
from ..data.splits import split_by_photo
from ..features.delf import pca_state
from ..features.extract import to_tensor
from ..features.whitening import l2n, learn_whitening
from ..models.backbones import create_backbone
from ..models.delf import DelfCheckpoint, DelfHead, DelfNet, default_stage, save_delf
from ..utils.config import to_dict
from ..utils.device import resolve_device
from ..utils.progress import progress_bar
from .config import DelfTrainConfig


@dataclass
class DelfTrainResult:
    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def cache_features(
    net: DelfNet, records: Sequence[ImageRecord], size: int, *, batch: int = 16, progress: bool | None = None
) -> tuple[torch.Tensor, list[int]]:
    """float16 ``N x C x h x w`` features of the readable ``records`` resized to ``size`` x ``size``, and
    the indices of those records."""
    prep = net.backbone.preprocessing
    mean, std = torch.tensor(prep.mean).view(3, 1, 1), torch.tensor(prep.std).view(3, 1, 1)
    device = next(net.head.parameters()).device
    maps, kept = [], []
    with progress_bar(f"DELF features {size}px", total=len(records), enabled=progress) as bar:
        for start in range(0, len(records), batch):
            xs = []
            for i in range(start, min(start + batch, len(records))):
                try:
                    img = load_image(records[i].path, draft_size=size)
                except ImageError:
                    continue
                xs.append(to_tensor(img, (size, size), mean, std))
                kept.append(i)
            if xs:
                maps.append(net.features(torch.stack(xs).to(device)).half().cpu())
            bar.advance(min(batch, len(records) - start))
    return torch.cat(maps), kept


def _accuracy(head: DelfHead, maps: torch.Tensor, labels: torch.Tensor, batch: int = 128) -> float:
    if not len(labels):
        return float("nan")
    with torch.no_grad():
        pred = torch.cat([head(maps[i : i + batch].float())[0].argmax(1) for i in range(0, len(maps), batch)])
    return float((pred == labels).float().mean())


def train_head(
    head: DelfHead,
    maps: list[torch.Tensor],
    labels: torch.Tensor,
    cfg: DelfTrainConfig,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    progress: bool | None = None,
) -> list[dict[str, float]]:
    """Fit ``head`` on cached feature maps (one tensor per training size, rows aligned with ``labels``)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    history = []
    n = len(labels)
    with progress_bar("DELF attention", total=cfg.epochs, enabled=progress) as bar:
        for epoch in range(cfg.epochs):
            head.train()
            t0, total, seen = time.perf_counter(), 0.0, 0
            for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
                level = maps[int(torch.randint(len(maps), (1,), generator=gen))]  # random rescaling
                logits, _ = head(level[idx].float())
                loss = F.cross_entropy(logits, labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            sched.step()
            head.eval()
            row = {"epoch": epoch + 1, "loss": total / max(seen, 1), "seconds": time.perf_counter() - t0}
            if val is not None:
                row["val_accuracy"] = _accuracy(head, *val)
            history.append(row)
            bar.advance(1)
    return history


def pca_sample(head: DelfHead, maps: torch.Tensor, per_photo: int, batch: int = 64) -> np.ndarray:
    """The ``per_photo`` highest-attention features of each map, L2-normalised (rows of a float32 array)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(maps), batch):
            f = maps[i : i + batch].float()
            a = head.attention(f).flatten(1)  # B x hw
            top = a.topk(min(per_photo, a.shape[1]), dim=1).indices  # B x k
            flat = f.flatten(2).transpose(1, 2)  # B x hw x C
            out.append(torch.gather(flat, 1, top[..., None].expand(-1, -1, flat.shape[-1])).reshape(-1, flat.shape[-1]))
    return l2n(torch.cat(out).numpy())


def train_delf(
    data: str | Path, out_dir: str | Path, cfg: DelfTrainConfig | None = None, *, progress: bool | None = None
) -> DelfTrainResult:
    """Train DELF's attention on ``data``'s labelled train split and write ``OUT/delf.pt`` (module docstring)."""
    cfg = cfg or DelfTrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    records = [r for r in read_dataset(data) if r.landmark_id is not None]
    if not records:
        raise DatasetError(f"{data}: no labelled training photos")
    split = split_by_photo(records, cfg.val_fraction, cfg.min_per_class, cfg.seed)
    backbone = create_backbone(cfg.backbone, pretrained=True)
    stage = cfg.stage or default_stage(backbone)
    channels = backbone.run_stages(torch.zeros(1, 3, 64, 64), 0, stage).shape[1]
    head = DelfHead(channels, len(split.classes), cfg.hidden)
    net = DelfNet(backbone, stage, head).to(device)
    photos = split.train + split.val
    maps, kept = [], None
    for size in cfg.sizes:
        m, k = cache_features(net, photos, size, batch=cfg.batch_photos, progress=progress)
        maps.append(m)
        kept = k
    assert kept is not None
    labels = torch.tensor(split.labels([photos[i] for i in kept]))
    is_train = torch.tensor([i < len(split.train) for i in kept])
    t_cache = time.perf_counter() - t_start
    train_maps = [m[is_train].to(device) for m in maps]
    val = (maps[-1][~is_train].to(device), labels[~is_train].to(device)) if (~is_train).any() else None
    history = train_head(head, train_maps, labels[is_train].to(device), cfg, val, progress=progress)
    head = head.cpu().eval()
    t_train = time.perf_counter() - t_start - t_cache
    sample = pca_sample(head, maps[-1][is_train], cfg.pca_per_photo)
    pca = learn_whitening(sample, min(cfg.pca_dim, channels), power=cfg.pca_power, shrinkage=cfg.pca_shrinkage)
    info = {
        "photos": len(kept),
        "train_photos": int(is_train.sum()),
        "classes": len(split.classes),
        "channels": int(channels),
        "stage": int(stage),
        "stride": net.stride,
        "pca_vectors": len(sample),
        "cache_s": round(t_cache, 1),
        "train_s": round(t_train, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "threads": torch.get_num_threads(),
        "final_val_accuracy": history[-1].get("val_accuracy", float("nan")),
        "config": to_dict(cfg),
    }
    ckpt = DelfCheckpoint(
        cfg.backbone,
        int(stage),
        {k: v.clone() for k, v in head.state_dict().items()},
        int(channels),
        len(split.classes),
        cfg.hidden,
        pca_state(pca),
        tuple(cfg.scales),
        json.loads(json.dumps(info)),
    )
    path = out / "delf.pt"
    save_delf(path, ckpt)
    (out / "metrics.json").write_text(json.dumps({"history": history, **info}, indent=2))
    return DelfTrainResult(path, history, info)
