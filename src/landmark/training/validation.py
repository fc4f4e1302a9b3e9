"""Validation during training: held-out photos embedded (cached per run) and scored with the challenge
metrics (GAP and accuracy of the kNN vote, mAP@100)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..data import ImageError, ImageRecord, probe_size
from ..data.splits import Split
from ..features.config import ExtractConfig
from ..features.extract import GlobalExtractor, _Photos, bucket_batches
from ..metrics import accuracy, global_average_precision, mean_average_precision_at_k
from ..models import functional as LF
from ..recognition.knn import knn_vote
from ..utils.io import atomic_path
from ..utils.progress import progress_bar
from .config import TrainConfig
from .data import AugmentedPhotos, train_transform
from .module import TrainModule

log = logging.getLogger(__name__)


def batch_starts(n: int, batch: int) -> list[int]:
    """Starts of the batches over ``n`` cached samples; a final batch of one is dropped (BatchNorm
    cannot normalise a single sample in training mode)."""
    starts = list(range(0, n, batch))
    return starts[:-1] if starts and n - starts[-1] == 1 and len(starts) > 1 else starts


def cache_key(records: Sequence[ImageRecord], cfg: TrainConfig, kind: str) -> str:
    # what the crops depend on (the photos are named below; zoom-out only when on, so that caches made
    # before the data.split / data.labels / data.zoom_out settings existed keep their key)
    data = {
        k: v
        for k, v in cfg.data.__dict__.items()
        if k not in ("num_workers", "split", "labels") and not (k.startswith("zoom_out") and cfg.data.zoom_out <= 1.0)
    }
    h = hashlib.sha256(
        json.dumps(
            [
                kind,
                [r.id for r in records],
                cfg.model.backbone,
                cfg.model.checkpoint,
                cfg.freeze_stages,
                cfg.cache_views,
                data if kind == "views" else cfg.eval_image_size,
                cfg.seed,
            ],
            default=str,
        ).encode()
    )
    return h.hexdigest()[:16]


def cached_views(
    module: TrainModule,
    records: Sequence[ImageRecord],
    cfg: TrainConfig,
    cache_dir: Path,
    device: torch.device,
    progress: bool | None,
) -> tuple[Tensor | None, set[str]]:
    """``N x V x C x h x w`` float16 frozen-stage outputs of V augmented crops per photo (cached on
    disk; None without photos), and the ids of the photos that could not be read (their rows are zeros)."""
    path = cache_dir / f"views-{cache_key(records, cfg, 'views')}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return (saved["views"], set(saved["failed"])) if isinstance(saved, dict) else (saved, set())
    prep = module.net.preprocessing
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    dataset = AugmentedPhotos(
        records, [0] * len(records), train_transform(cfg.data, prep.mean, prep.std), draft_size=cfg.data.image_size * 2
    )
    out: Tensor | None = None
    failed: set[str] = set()
    with progress_bar(
        f"cache {cfg.cache_views} crops/photo", total=len(records) * cfg.cache_views, enabled=progress
    ) as bar:
        for v in range(cfg.cache_views):
            loader = DataLoader(
                dataset, batch_size=16, num_workers=cfg.data.num_workers, collate_fn=keep_order, generator=g
            )
            row = 0
            for items in loader:
                failed.update(records[row + j].id for j, x in enumerate(items) if x is None)
                xs = torch.stack(
                    [x if x is not None else torch.zeros(3, cfg.data.image_size, cfg.data.image_size) for x in items]
                )
                with torch.no_grad():
                    f = module.frozen_features(xs.to(device)).half().cpu()
                if out is None:
                    out = torch.empty((len(records), cfg.cache_views, *f.shape[1:]), dtype=torch.float16)
                out[row : row + len(f), v] = f
                row += len(f)
                bar.advance(len(f))
    with atomic_path(path) as tmp:
        torch.save({"views": out, "failed": sorted(failed)}, tmp)
    return out, failed


def keep_order(batch):
    return [b[0] if b is not None else None for b in batch]


class EvalCache:
    """Frozen-stage outputs of the validation and training photos at the evaluation size."""

    def __init__(self, module: TrainModule, split: Split, cfg: TrainConfig, device: torch.device):
        self.groups: list[tuple[list[int], Tensor]] = []
        records = split.train + split.val
        shapes, keep = [], []
        for i, r in enumerate(records):
            try:
                w, h = probe_size(r.path)
            except ImageError:
                continue
            shapes.append(LF.target_shape(h, w, cfg.eval_image_size, 32))
            keep.append(i)
        prep = module.net.preprocessing
        ds = _Photos([str(records[i].path) for i in keep], shapes, prep.mean, prep.std)
        module.eval()
        for b in bucket_batches(shapes, 16):
            items = [ds[j] for j in b]
            ok = [(keep[j], t) for (j, t, _) in items if t is not None]
            if not ok:
                continue
            x = torch.stack([t for _, t in ok]).to(device)
            with torch.no_grad():
                self.groups.append(([i for i, _ in ok], module.frozen_features(x).half().cpu()))
        self.n = len(records)


@torch.no_grad()
def embed_all(
    module: TrainModule, split: Split, cfg: TrainConfig, device: torch.device, cache: EvalCache | None
) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of (train photos, val photos) at the evaluation size; rows of unreadable photos are 0."""
    module.eval()
    records = split.train + split.val
    out = np.zeros((len(records), module.net.dim), np.float32)
    if cache is not None:
        for idx, f in cache.groups:
            _, emb = module.embed_features(f.to(device).float(), cached=True)
            out[idx] = emb.float().cpu().numpy()
    else:
        # eager torch: the weights change every epoch, an exported graph would be stale
        ex = GlobalExtractor(
            module.net,
            ExtractConfig(image_size=cfg.eval_image_size, num_workers=0, device=str(device), engine="torch"),
            cfg.model,
        )
        res = ex.extract(records, progress=False)
        pos = {r.id: i for i, r in enumerate(records)}
        out[[pos[i] for i in res.ids]] = res.vectors
    return out[: len(split.train)], out[len(split.train) :]


def validate(
    module: TrainModule, split: Split, cfg: TrainConfig, device: torch.device, cache: EvalCache | None = None
) -> dict[str, float]:
    """Val photos as queries against the training photos: top-5 vote GAP / accuracy, and mAP@100."""
    db, queries = embed_all(module, split, cfg, device, cache)
    db_labels = np.array([r.landmark_id for r in split.train])
    sims = queries @ db.T
    order = np.argsort(-sims, axis=1)[:, :100]
    top = np.take_along_axis(sims, order, axis=1)
    votes = knn_vote(db_labels[order], top, k=5)
    qids = [r.id for r in split.val]
    preds = {q: (v.landmark_id, v.score) for q, v in zip(qids, votes)}
    truth = {r.id: r.landmark_id for r in split.val}
    rankings = {q: [split.train[j].id for j in row] for q, row in zip(qids, order)}
    relevant = {r.id: [t.id for t in split.train if t.landmark_id == r.landmark_id] for r in split.val}
    module.train()
    return {
        "val_gap": global_average_precision(preds, truth),
        "val_accuracy": accuracy(preds, truth),
        "val_map@100": mean_average_precision_at_k(rankings, relevant, k=100),
    }
