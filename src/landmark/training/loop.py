"""The fit loop: single process or torch DDP (launched with ``torchrun``), AMP on CUDA, gradient
accumulation, warm-up + cosine/step/exp schedules, a checkpoint every epoch, exact resume, and
validation (GAP, accuracy, mAP@100 on photos held out from ``train``) logged to ``metrics.csv``.

With ``freeze_stages`` > 0 the first backbone stages stay frozen; with ``cache_views`` > 0 their
output for a few augmented crops of every photo is computed once, so each epoch only runs the
trainable stages (what makes ``cpu-mini`` fit in minutes on a laptop CPU).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..config import ConfigError, ExtractConfig, merge
from ..data import DatasetError, ImageRecord, is_gldv2, read_folder, read_gldv2
from ..evaluation.metrics import accuracy, global_average_precision, mean_average_precision_at_k
from ..features.extract import GlobalExtractor, _Photos, bucket_batches
from ..models import functional as LF
from ..models.heads import ArcFace, CosFace, LinearHead, dynamic_margins
from ..models.net import DescriptorNet, build_model, save_checkpoint
from ..recognition.knn import knn_vote
from ..utils.device import resolve_device
from ..utils.io import atomic_path, atomic_write_json
from ..utils.progress import progress_bar
from .config import HEADS, OPTIMIZERS, SCHEDULES, TrainConfig, check_train
from .data import AugmentedPhotos, Split, collate_skip_none, make_sampler, split_by_photo, train_transform
from .losses import npairs_loss, one_vs_all_bce, smoothed_cross_entropy
from ..data.manifests import read_labels
from .pseudo import relabel

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    model_path: Path                      # best validated model (a ``landmark`` checkpoint)
    last_path: Path                       # full training state for --resume
    history: list[dict[str, Any]] = field(default_factory=list)


def make_head(cfg: TrainConfig, dim: int, counts: Sequence[int]) -> nn.Module | None:
    h = cfg.head
    n = len(counts)
    if h.kind in ("arcface", "subcenter_arcface"):
        margins = dynamic_margins(torch.tensor(counts), h.margin_low, h.margin_high) if h.dynamic_margin else None
        k = h.subcenters if h.kind == "subcenter_arcface" else 1
        return ArcFace(dim, n, h.scale, h.margin, subcenters=k, class_margins=margins)
    if h.kind == "cosface":
        return CosFace(dim, n, h.scale, h.margin)
    if h.kind in ("softmax", "bce"):
        return LinearHead(dim, n)
    if h.kind == "npairs":
        return None
    raise ValueError(f"unknown head {h.kind!r}; choose one of {HEADS}")


class TrainModule(nn.Module):
    """Descriptor network + head; ``forward(inputs, labels) -> (loss, embeddings)``.

    ``inputs`` are images, or the frozen stages' output when training on cached crops.
    """

    def __init__(self, net: DescriptorNet, head: nn.Module | None, cfg: TrainConfig):
        super().__init__()
        self.net, self.head, self.cfg = net, head, cfg
        self.frozen = cfg.freeze_stages
        if self.frozen and any(t < self.frozen for t in net.taps):
            raise ConfigError(f"model.pooling=agem reads the inputs of backbone stages {list(net.taps)}; with "
                              f"freeze_stages={self.frozen} some are frozen (or cached): set freeze_stages <= "
                              f"{min(net.taps)}")
        try:
            stages = net.backbone.stages() if self.frozen else None
        except NotImplementedError:
            raise ConfigError(f"freeze_stages={self.frozen}: backbone {net.backbone.name} cannot be split into stages "
                              "(set freeze_stages=0 and cache_views=0)") from None
        self.prefix = nn.Sequential(*stages[: self.frozen]) if stages else None
        self.suffix = nn.Sequential(*stages[self.frozen:]) if stages else None
        frozen = list(self.prefix.parameters()) if self.prefix is not None else []
        if net.backbone.head is not None:     # the ImageNet classifier plays no part in the loss
            frozen += list(net.backbone.head.parameters())
        for p in frozen:
            p.requires_grad_(False)
        if self.prefix is not None:
            self.prefix.eval()            # from the start: caching crops must not touch its BatchNorm statistics

    def train(self, mode: bool = True) -> "TrainModule":
        super().train(mode)
        if self.prefix is not None:
            self.prefix.eval()            # frozen BatchNorm keeps its ImageNet statistics
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
        else:      # the attention branch reads maps of the trained stages (checked: taps >= freeze_stages)
            *tapped, fmap = self.net.backbone.forward_taps(fmap if cached else self.frozen_features(fmap), taps,
                                                           start=self.frozen)
        return self.net.pool(self.net.attend(fmap, tapped))

    def embed_features(self, fmap: Tensor, cached: bool) -> tuple[Tensor, Tensor]:
        """(pre-normalisation embedding, unit embedding) from images or cached frozen features."""
        z = self.net.embedding(self.pooled(fmap, cached))
        return z, LF.l2n(z)

    def forward(self, inputs: Tensor, labels: Tensor, cached: bool = False) -> tuple[Tensor, Tensor]:
        z, emb = self.embed_features(inputs, cached)
        h = self.cfg.head
        if h.kind == "npairs":
            loss = npairs_loss(emb, labels, scale=h.scale)
        elif h.kind == "bce":
            loss = one_vs_all_bce(self.head(z, labels), labels)
        else:
            loss = smoothed_cross_entropy(self.head(z, labels), labels, h.label_smoothing)
        return loss, emb


@torch.no_grad()
def initialise_from_features(module: TrainModule, pooled: Tensor, labels: Tensor,
                             embedding: bool = True) -> dict[str, Any]:
    """Start training from the pretrained descriptor instead of random layers.

    ``pooled`` are the pooled features (``N x C``) of training crops and ``labels`` their classes.
    An FC+BN embedding becomes the PCA of those features (the BN scale undoes the batch
    standardisation, so the layer outputs the centred PCA coordinates, not a whitening that
    amplifies noisy directions), and the centres of a cosine head (ArcFace, CosFace) become the
    unit class means of the resulting embeddings: the first steps then refine a working
    descriptor rather than recover from a random projection. ``embedding=False`` keeps the
    embedding as it is (a trained checkpoint's) and sets the head only. Returns what was set, for the log.
    """
    from ..features.whitening import learn_whitening
    from ..models.heads import CosineHead

    done: dict[str, Any] = {}
    pooled = pooled.float().cpu()
    emb = module.net.embedding
    if isinstance(emb, nn.Sequential) and embedding:
        lin, bn = emb[0], emb[1]
        dim = lin.out_features
        if len(pooled) <= dim:
            raise ValueError(f"initialising a {dim}-d embedding by PCA needs more than {dim} training crops, "
                             f"got {len(pooled)}; use init=random or more photos")
        w = learn_whitening(pooled.double().numpy(), dim, power=0.0)
        eig = torch.from_numpy(w.eigenvalues).float().clamp_min(1e-12)
        dev = lin.weight.device
        lin.weight.copy_(torch.from_numpy(w.projection).float().to(dev))
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


def _pooled_training_features(module: TrainModule, records: Sequence[ImageRecord], labels: Sequence[int],
                              cfg: TrainConfig, cached: Tensor | None, device: torch.device,
                              progress: bool | None) -> tuple[Tensor, Tensor]:
    """Pooled features of (at most ``cfg.init_photos``) training photos: their cached crops, or
    augmented crops (one per photo, more passes while a PCA of the embedding size lacks crops)."""
    rng = np.random.default_rng(cfg.seed)
    idx = np.sort(rng.permutation(len(records))[: cfg.init_photos]) if len(records) > cfg.init_photos \
        else np.arange(len(records))
    passes = 1 if cached is not None else max(1, math.ceil(((cfg.model.embedding_dim or 0) + 1) / max(1, len(idx))))
    module.eval()
    feats, labs = [], []
    with torch.no_grad(), progress_bar("initialise from pretrained features", total=len(idx) * passes,
                                       enabled=progress) as bar:
        if cached is not None:
            for i in range(0, len(idx), 64):
                sel = torch.from_numpy(idx[i:i + 64])
                x = cached[sel].flatten(0, 1).to(device).float()    # every cached crop of these photos
                feats.append(module.pooled(x, cached=True).float().cpu())
                labs.append(torch.tensor([labels[j] for j in sel.tolist()]).repeat_interleave(cached.shape[1]))
                bar.advance(len(sel))
        else:
            prep = module.net.preprocessing
            ds = AugmentedPhotos([records[j] for j in idx], [labels[j] for j in idx],
                                 train_transform(cfg.data, prep.mean, prep.std), draft_size=cfg.data.image_size * 2)
            for _ in range(passes):
                for b in DataLoader(ds, batch_size=cfg.optim.batch_size, num_workers=cfg.data.num_workers,
                                    collate_fn=collate_skip_none):
                    if b is None:
                        continue
                    x, y = b
                    feats.append(module.pooled(x.to(device), cached=False).float().cpu())
                    labs.append(y)
                    bar.advance(len(y))
    module.train()
    return torch.cat(feats), torch.cat(labs)


def lr_factor(step: int, total: int, warmup: int, cfg) -> float:
    """Multiplier of the base learning rate at ``step`` (linear warm-up, then the schedule)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    floor = cfg.final_lr / cfg.lr
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule == "step":
        return 0.1 ** sum(t >= m for m in cfg.step_milestones)
    if cfg.schedule == "exp":
        return floor ** min(1.0, t)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {SCHEDULES}")


def _param_groups(module: TrainModule, cfg: TrainConfig) -> list[dict[str, Any]]:
    backbone = {id(p) for p in module.net.backbone.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in module.parameters():
        if not p.requires_grad:
            continue
        key = (id(p) in backbone, p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    o = cfg.optim
    return [{"params": ps, "lr": o.lr * (o.backbone_lr_mult if is_bb else 1.0), "base_lr_mult": o.backbone_lr_mult if is_bb else 1.0,
             "weight_decay": 0.0 if no_wd else o.weight_decay} for (is_bb, no_wd), ps in groups.items()]


def _optimizer(module: TrainModule, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(module, cfg)
    o = cfg.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=True)
    if o.optimizer == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr)
    raise ValueError(f"unknown optimizer {o.optimizer!r}; choose one of {OPTIMIZERS}")


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Dist:
    """Process-group bookkeeping: a no-op in a single process, DDP under ``torchrun``."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.world > 1 else 0
        if self.world > 1 and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            torch.cuda.set_device(self.device)
        else:
            self.device = resolve_device(device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world


def training_records(data: str | Path, cfg: TrainConfig) -> list[ImageRecord]:
    """The photos of ``data`` training reads (its ``data.split``, or the folder) with their labels,
    those of ``data.labels`` where given."""
    gldv2 = is_gldv2(data)
    if not gldv2 and cfg.data.split != "train":
        raise ConfigError(f"data.split={cfg.data.split}: {data} is a folder of photos, not a GLDv2 root with splits")
    records = (read_gldv2(data, cfg.data.split) if gldv2 else read_folder(data)).records
    if cfg.data.labels:
        records = relabel(records, read_labels(cfg.data.labels))
        if not records:
            raise DatasetError(f"data.labels={cfg.data.labels}: it names none of the photos of {data} "
                               f"({cfg.data.split if gldv2 else 'folder'})")
    return records


def train(data: str | Path, out_dir: str | Path, cfg: TrainConfig, *, resume: bool = False,
          progress: bool | None = None, max_steps: int | None = None) -> FitResult:
    """Fine-tune a descriptor network on the labelled photos of ``data`` (:func:`training_records`).

    Writes ``last.pt`` (full state, every epoch), ``model.pt`` (best validated model, usable as
    ``--model``), ``metrics.csv`` and ``train_config.json`` to ``out_dir``. ``max_steps`` stops early
    (for tests and benchmarks).
    """
    check_train(cfg)             # a TrainConfig made in Python meets the checks of load_train_config
    out = Path(out_dir)
    ctx = _Dist(cfg.device)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    _seed_all(cfg.seed)
    split = split_by_photo(training_records(data, cfg), cfg.data.val_fraction, cfg.data.min_per_class, cfg.seed)
    if len(split.classes) < 2:   # one class: every loss is zero or constant, nothing is learned
        raise DatasetError(f"{data}: training needs photos of at least 2 landmarks with {cfg.data.min_per_class} or "
                           f"more photos each, found {len(split.classes)}")
    labels = split.labels(split.train)
    counts = np.bincount(labels, minlength=len(split.classes)).tolist()

    net = build_model(cfg.model, pretrained=cfg.backbone_weights == "pretrained")
    head = make_head(cfg, net.dim, counts)
    module = TrainModule(net, head, cfg).to(ctx.device)
    optimizer = _optimizer(module, cfg)
    amp = cfg.optim.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, step, history, best = 0, 0, [], -1.0
    last_path, model_path = out / "last.pt", out / "model.pt"
    resumed_state = None
    if resume and last_path.is_file():
        state = resumed_state = torch.load(last_path, map_location="cpu", weights_only=False)
        # the saved settings over today's defaults: a setting added since (e.g. optim.ema) reads as its default
        if merge(TrainConfig(), state["train_config"]).to_dict() != cfg.to_dict():
            raise ConfigError(f"{last_path} was written with another training configuration; "
                             "resume with the same preset and overrides, or use a new --out")
        saved = state.get("labels_digest")
        if saved is None:     # written before the digest: the classes train_config.json recorded
            saved_classes = _saved_classes(out / "train_config.json")
            same = saved_classes is None or saved_classes == split.classes
        else:
            same = saved == _labels_digest(split)
        if not same:
            raise ConfigError(f"{last_path} was trained on other photos or landmarks than {data} gives now "
                              "(data.labels rewritten?); use a new --out")
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step, history, best = state["epoch"] + 1, state["step"], state["history"], state["best"]
        _set_rng_state(state["rng"])
        if ctx.main:
            log.info("resuming from %s at epoch %d", last_path, start_epoch)
            _write_log(out / "metrics.csv", history)   # drops a row written after the last checkpoint

    prep = net.preprocessing
    sampler = make_sampler(cfg.data.sampler, labels, cfg.seed, ctx.rank, ctx.world, cfg.data.epoch_samples or None)
    batch = cfg.optim.batch_size // ctx.world
    cached = None
    if cfg.cache_views:   # rank 0 computes the cache, the other ranks then read it
        if not ctx.main:
            ctx.barrier()
        cached, failed = _cached_views(module, split.train, cfg, out / "cache", ctx.device, progress if ctx.main else False)
        if ctx.main:
            ctx.barrier()
        if failed:   # as the loader path skips them: never trained on as black crops
            log.warning("skipped %d unreadable training photos: %s", len(failed), ", ".join(sorted(failed)[:10]))
            keep = [i for i, r in enumerate(split.train) if r.id not in failed]
            cached, split.train = cached[keep], [split.train[i] for i in keep]
            labels = split.labels(split.train)
            sampler = make_sampler(cfg.data.sampler, labels, cfg.seed, ctx.rank, ctx.world, cfg.data.epoch_samples or None)
        steps_per_epoch = len(_batch_starts(len(sampler), batch))
    else:
        dataset = AugmentedPhotos(split.train, labels, train_transform(cfg.data, prep.mean, prep.std),
                                  draft_size=cfg.data.image_size * 2)
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=cfg.data.num_workers,
                            collate_fn=collate_skip_none, pin_memory=ctx.device.type == "cuda", drop_last=True,
                            persistent_workers=False)
        steps_per_epoch = len(loader)
    if cfg.init == "pretrained" and start_epoch == 0 and step == 0 and ctx.main:
        pooled, plabels = _pooled_training_features(module, split.train, labels, cfg, cached, ctx.device, progress)
        # a trained checkpoint (model.checkpoint) keeps its embedding: only the new head starts at the class means
        log.info("initialised from pretrained features: %s",
                 initialise_from_features(module, pooled, plabels, embedding=not cfg.model.checkpoint))
    # DDP broadcasts rank 0's parameters and buffers (the initialisation above) when it wraps the module
    ddp = nn.parallel.DistributedDataParallel(module, device_ids=[ctx.device] if ctx.device.type == "cuda" else None) \
        if ctx.world > 1 else module
    ema = _make_ema(module, cfg, resumed_state)
    evaluated = ema.module if ema is not None else module   # what is validated and saved as model.pt
    accum = max(1, cfg.optim.grad_accum)
    total_updates = max(1, cfg.optim.epochs * math.ceil(steps_per_epoch / accum))   # a partial accumulation steps too
    warmup = int(cfg.optim.warmup_epochs * steps_per_epoch / accum)
    eval_cache = None
    if ctx.main:
        atomic_write_json(out / "train_config.json", cfg.to_dict() | {"classes": split.classes,
                                                                     "train_photos": len(split.train),
                                                                     "val_photos": len(split.val)})

    def update() -> None:
        if cfg.optim.clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(module)

    def set_lr() -> None:
        f = lr_factor(step, total_updates, warmup, cfg.optim)
        for g in optimizer.param_groups:
            g["lr"] = cfg.optim.lr * g["base_lr_mult"] * f

    labels_t = torch.tensor(labels, dtype=torch.long)
    if ctx.main and split.val and start_epoch == 0 and not history:   # the "before" row: the untrained model
        if cfg.freeze_stages:
            eval_cache = _EvalCache(module, split, cfg, ctx.device)
        row0 = {"epoch": 0, "step": 0} | validate(evaluated, split, cfg, ctx.device, eval_cache)
        history.append(row0)
        _log_row(out / "metrics.csv", row0)
    for epoch in range(start_epoch, cfg.optim.epochs):
        module.train()
        sampler.set_epoch(epoch)
        t0, seen, loss_sum, n_loss, micro = time.perf_counter(), 0, 0.0, 0, 0
        if cached is not None:
            order = torch.tensor(list(iter(sampler)), dtype=torch.long)
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 10 + ctx.rank)
            view = torch.randint(cached.shape[1], (len(order),), generator=g)
            flip = torch.rand(len(order), generator=g) < (0.5 if cfg.data.flip else 0.0)
            batches = [(order[i:i + batch], view[i:i + batch], flip[i:i + batch]) for i in _batch_starts(len(order), batch)]
        else:
            batches = loader
        with progress_bar(f"epoch {epoch + 1}/{cfg.optim.epochs}", total=steps_per_epoch,
                          enabled=progress if ctx.main else False) as bar:
            for i, b in enumerate(batches):
                if b is None:
                    continue
                if cached is not None:
                    idx, v, fl = b
                    x = cached[idx, v].to(ctx.device, non_blocking=True).float()
                    x = torch.where(fl.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
                    y = labels_t[idx].to(ctx.device)
                else:
                    x, y = (t.to(ctx.device, non_blocking=True) for t in b)
                set_lr()
                with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
                    loss, _ = ddp(x, y, cached=cached is not None)
                scaler.scale(loss / accum).backward()
                micro += 1
                if micro % accum == 0:
                    update()
                    step += 1
                loss_sum += float(loss.detach())
                n_loss += 1
                seen += len(y)
                bar.advance()
                if max_steps is not None and step >= max_steps:
                    break
        if micro % accum and not (max_steps is not None and step >= max_steps):
            # the epoch's last, partial accumulation steps here: it never joins the next epoch's first
            # update (which --resume could not repeat), and an epoch shorter than grad_accum still trains
            update()
            step += 1
        elapsed = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "loss": ctx.mean(loss_sum / max(1, n_loss)),
                               "lr": max(g["lr"] for g in optimizer.param_groups),
                               "images_per_s": ctx.mean(seen / max(elapsed, 1e-9)) * ctx.world, "epoch_s": elapsed}
        last_epoch = epoch + 1 == cfg.optim.epochs or (max_steps is not None and step >= max_steps)
        if ctx.main and split.val and ((cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0) or last_epoch):
            if eval_cache is None and cfg.freeze_stages:
                eval_cache = _EvalCache(module, split, cfg, ctx.device)
            row |= validate(evaluated, split, cfg, ctx.device, eval_cache)
        if ctx.main:
            history.append(row)
            _log_row(out / "metrics.csv", row)
            score = row.get("val_map@100", -row["loss"])
            if score > best or not model_path.exists():
                best = score
                save_checkpoint(model_path, evaluated.net, cfg.model, {
                    "classes": split.classes, "val_ids": [r.id for r in split.val],   # for calibration
                    "train_split": cfg.data.split,
                    "head": evaluated.head.state_dict() if evaluated.head is not None else None,
                    "head_kind": cfg.head.kind, "epoch": epoch + 1, "metrics": row})
            with atomic_path(last_path) as tmp:
                torch.save({"module": module.state_dict(), "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict(), "epoch": epoch, "step": step, "history": history,
                            "best": best, "rng": _rng_state(), "train_config": cfg.to_dict(), "labels_digest": _labels_digest(split),
                            "ema": ema.state_dict() if ema is not None else None}, tmp)
            log.info("epoch %d: %s", epoch + 1, json.dumps(row))
        ctx.barrier()
        if max_steps is not None and step >= max_steps:
            break
    return FitResult(model_path, last_path, history)


def _make_ema(module: TrainModule, cfg: TrainConfig, resumed: dict[str, Any] | None):
    """An exponential moving average of ``module``'s parameters (decay ``cfg.optim.ema`` per update;
    its BatchNorm statistics follow the trained module's), restored from a ``--resume`` state; None
    when ``ema`` is 0. torch's ``AveragedModel`` walks each parameter once, also those the trainable
    stages share with the backbone (``TrainModule.suffix``)."""
    decay = cfg.optim.ema
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    if resumed is not None and resumed.get("ema") is not None:
        ema.load_state_dict(resumed["ema"])
    return ema


_LOG_FIELDS = ["epoch", "step", "loss", "lr", "images_per_s", "epoch_s", "val_gap", "val_accuracy", "val_map@100"]


def _log_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_LOG_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def _write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``metrics.csv`` holding exactly ``rows`` (replaced atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=_LOG_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)


def _batch_starts(n: int, batch: int) -> list[int]:
    """Starts of the batches over ``n`` cached samples; a final batch of one is dropped (BatchNorm
    cannot normalise a single sample in training mode)."""
    starts = list(range(0, n, batch))
    return starts[:-1] if starts and n - starts[-1] == 1 and len(starts) > 1 else starts


def _labels_digest(split: Split) -> str:
    """What a resumed run must train on again: every training and validation photo with its landmark."""
    pairs = sorted((r.id, r.landmark_id) for r in split.train + split.val)
    return hashlib.sha256(json.dumps([pairs, split.classes]).encode()).hexdigest()[:16]


def _saved_classes(path: Path) -> list[int] | None:
    try:
        return json.loads(path.read_text()).get("classes")
    except (OSError, ValueError):
        return None


def _cache_key(records: Sequence[ImageRecord], cfg: TrainConfig, kind: str) -> str:
    # what the crops depend on (the photos are named below; zoom-out only when on, so that caches made
    # before the data.split / data.labels / data.zoom_out settings existed keep their key)
    data = {k: v for k, v in cfg.data.__dict__.items() if k not in ("num_workers", "split", "labels")
            and not (k.startswith("zoom_out") and cfg.data.zoom_out <= 1.0)}
    h = hashlib.sha256(json.dumps([kind, [r.id for r in records], cfg.model.backbone, cfg.model.checkpoint,
                                   cfg.freeze_stages, cfg.cache_views, data if kind == "views" else cfg.eval_image_size,
                                   cfg.seed], default=str).encode())
    return h.hexdigest()[:16]


def _cached_views(module: TrainModule, records: Sequence[ImageRecord], cfg: TrainConfig, cache_dir: Path,
                  device: torch.device, progress: bool | None) -> tuple[Tensor, set[str]]:
    """``N x V x C x h x w`` float16 frozen-stage outputs of V augmented crops per photo (cached on
    disk), and the ids of the photos that could not be read (their rows are zeros)."""
    path = cache_dir / f"views-{_cache_key(records, cfg, 'views')}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return (saved["views"], set(saved["failed"])) if isinstance(saved, dict) else (saved, set())
    prep = module.net.preprocessing
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    dataset = AugmentedPhotos(records, [0] * len(records), train_transform(cfg.data, prep.mean, prep.std),
                              draft_size=cfg.data.image_size * 2)
    out: Tensor | None = None
    failed: set[str] = set()
    with progress_bar(f"cache {cfg.cache_views} crops/photo", total=len(records) * cfg.cache_views,
                      enabled=progress) as bar:
        for v in range(cfg.cache_views):
            loader = DataLoader(dataset, batch_size=16, num_workers=cfg.data.num_workers, collate_fn=_keep_order,
                                generator=g)
            row = 0
            for items in loader:
                failed.update(records[row + j].id for j, x in enumerate(items) if x is None)
                xs = torch.stack([x if x is not None else torch.zeros(3, cfg.data.image_size, cfg.data.image_size)
                                  for x in items])
                with torch.no_grad():
                    f = module.frozen_features(xs.to(device)).half().cpu()
                if out is None:
                    out = torch.empty((len(records), cfg.cache_views, *f.shape[1:]), dtype=torch.float16)
                out[row:row + len(f), v] = f
                row += len(f)
                bar.advance(len(f))
    with atomic_path(path) as tmp:
        torch.save({"views": out, "failed": sorted(failed)}, tmp)
    return out, failed


def _keep_order(batch):
    return [b[0] if b is not None else None for b in batch]


class _EvalCache:
    """Frozen-stage outputs of the validation and training photos at the evaluation size."""

    def __init__(self, module: TrainModule, split: Split, cfg: TrainConfig, device: torch.device):
        self.groups: list[tuple[list[int], Tensor]] = []
        records = split.train + split.val
        shapes, keep = [], []
        from ..data import ImageError, probe_size
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
def _embed_all(module: TrainModule, split: Split, cfg: TrainConfig, device: torch.device,
               cache: _EvalCache | None) -> tuple[np.ndarray, np.ndarray]:
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
        ex = GlobalExtractor(module.net, ExtractConfig(image_size=cfg.eval_image_size, num_workers=0,
                                                       device=str(device), engine="torch"), cfg.model)
        res = ex.extract(records, progress=False)
        pos = {r.id: i for i, r in enumerate(records)}
        out[[pos[i] for i in res.ids]] = res.vectors
    return out[: len(split.train)], out[len(split.train):]


def validate(module: TrainModule, split: Split, cfg: TrainConfig, device: torch.device,
             cache: _EvalCache | None = None) -> dict[str, float]:
    """Val photos as queries against the training photos: top-5 vote GAP / accuracy, and mAP@100."""
    db, queries = _embed_all(module, split, cfg, device, cache)
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
    return {"val_gap": global_average_precision(preds, truth), "val_accuracy": accuracy(preds, truth),
            "val_map@100": mean_average_precision_at_k(rankings, relevant, k=100)}
