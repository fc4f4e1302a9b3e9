"""The fit loop: single process or torch DDP (launched with ``torchrun``), AMP on CUDA, gradient
accumulation, warm-up + cosine/step/exp schedules, a checkpoint every epoch, exact resume, and
validation (GAP, accuracy, mAP@100 on photos held out from ``train``) logged to ``metrics.csv``.

With ``freeze_stages`` > 0 the first backbone stages stay frozen; with ``cache_views`` > 0 their
output for a few augmented crops of every photo is computed once, so each epoch only runs the
trainable stages (what makes ``cpu-mini`` fit in minutes on a laptop CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import DatasetError, ImageRecord, is_gldv2, read_folder, read_gldv2
from ..data.manifests import read_labels
from ..data.splits import Split, split_by_photo
from ..models.net import build_model, save_checkpoint
from ..utils.config import ConfigError, merge
from ..utils.io import atomic_path, atomic_write_json
from ..utils.progress import progress_bar
from .config import TrainConfig, check_train
from .data import AugmentedPhotos, collate_skip_none, make_sampler, train_transform
from .module import TrainModule, initialise_from_features, make_head, pooled_training_features
from .optim import lr_factor, make_ema, make_optimizer
from .pseudo import relabel
from .runtime import Dist, log_row, rng_state, seed_all, set_rng_state, write_log
from .validation import EvalCache, batch_starts, cached_views, validate

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    model_path: Path  # best validated model (a ``landmark`` checkpoint)
    last_path: Path  # full training state for --resume
    history: list[dict[str, Any]] = field(default_factory=list)


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
            raise DatasetError(
                f"data.labels={cfg.data.labels}: it names none of the photos of {data} "
                f"({cfg.data.split if gldv2 else 'folder'})"
            )
    return records


def train(
    data: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool | None = None,
    max_steps: int | None = None,
) -> FitResult:
    """Fine-tune a descriptor network on the labelled photos of ``data`` (:func:`training_records`).

    Writes ``last.pt`` (full state, every epoch), ``model.pt`` (best validated model, usable as
    ``--model``), ``metrics.csv`` and ``train_config.json`` to ``out_dir``. ``max_steps`` stops early
    (for tests and benchmarks).
    """
    check_train(cfg)  # a TrainConfig made in Python meets the checks of load_train_config
    out = Path(out_dir)
    ctx = Dist(cfg.device)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    seed_all(cfg.seed)
    split = split_by_photo(training_records(data, cfg), cfg.data.val_fraction, cfg.data.min_per_class, cfg.seed)
    if len(split.classes) < 2:  # one class: every loss is zero or constant, nothing is learned
        raise DatasetError(
            f"{data}: training needs photos of at least 2 landmarks with {cfg.data.min_per_class} or "
            f"more photos each, found {len(split.classes)}"
        )
    labels = split.labels(split.train)
    counts = np.bincount(labels, minlength=len(split.classes)).tolist()

    net = build_model(cfg.model, pretrained=cfg.backbone_weights == "pretrained")
    head = make_head(cfg, net.dim, counts)
    module = TrainModule(net, head, cfg).to(ctx.device)
    optimizer = make_optimizer(module, cfg)
    amp = cfg.optim.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, step, history, best = 0, 0, [], -1.0
    last_path, model_path = out / "last.pt", out / "model.pt"
    resumed_state = None
    if resume and last_path.is_file():
        state = resumed_state = torch.load(last_path, map_location="cpu", weights_only=False)
        # the saved settings over today's defaults: a setting added since (e.g. optim.ema) reads as its default
        if merge(TrainConfig(), state["train_config"]).to_dict() != cfg.to_dict():
            raise ConfigError(
                f"{last_path} was written with another training configuration; "
                "resume with the same preset and overrides, or use a new --out"
            )
        saved = state.get("labels_digest")
        if saved is None:  # written before the digest: the classes train_config.json recorded
            saved_classes = _saved_classes(out / "train_config.json")
            same = saved_classes is None or saved_classes == split.classes
        else:
            same = saved == _labels_digest(split)
        if not same:
            raise ConfigError(
                f"{last_path} was trained on other photos or landmarks than {data} gives now "
                "(data.labels rewritten?); use a new --out"
            )
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step, history, best = state["epoch"] + 1, state["step"], state["history"], state["best"]
        set_rng_state(state["rng"])
        if ctx.main:
            log.info("resuming from %s at epoch %d", last_path, start_epoch)
            write_log(out / "metrics.csv", history)  # drops a row written after the last checkpoint

    prep = net.preprocessing
    sampler = make_sampler(cfg.data.sampler, labels, cfg.seed, ctx.rank, ctx.world, cfg.data.epoch_samples or None)
    batch = cfg.optim.batch_size // ctx.world
    cached = None
    if cfg.cache_views:  # rank 0 computes the cache, the other ranks then read it
        if not ctx.main:
            ctx.barrier()
        cached, failed = cached_views(
            module, split.train, cfg, out / "cache", ctx.device, progress if ctx.main else False
        )
        if ctx.main:
            ctx.barrier()
        if failed:  # as the loader path skips them: never trained on as black crops
            log.warning("skipped %d unreadable training photos: %s", len(failed), ", ".join(sorted(failed)[:10]))
            keep = [i for i, r in enumerate(split.train) if r.id not in failed]
            assert cached is not None  # photos were read
            cached, split.train = cached[keep], [split.train[i] for i in keep]
            labels = split.labels(split.train)
            sampler = make_sampler(
                cfg.data.sampler, labels, cfg.seed, ctx.rank, ctx.world, cfg.data.epoch_samples or None
            )
        steps_per_epoch = len(batch_starts(len(sampler), batch))
    else:
        dataset = AugmentedPhotos(
            split.train, labels, train_transform(cfg.data, prep.mean, prep.std), draft_size=cfg.data.image_size * 2
        )
        loader = DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=cfg.data.num_workers,
            collate_fn=collate_skip_none,
            pin_memory=ctx.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
        )
        steps_per_epoch = len(loader)
    if cfg.init == "pretrained" and start_epoch == 0 and step == 0 and ctx.main:
        pooled, plabels = pooled_training_features(module, split.train, labels, cfg, cached, ctx.device, progress)
        # a trained checkpoint (model.checkpoint) keeps its embedding: only the new head starts at the class means
        log.info(
            "initialised from pretrained features: %s",
            initialise_from_features(module, pooled, plabels, embedding=not cfg.model.checkpoint),
        )
    # DDP broadcasts rank 0's parameters and buffers (the initialisation above) when it wraps the module
    ddp = (
        nn.parallel.DistributedDataParallel(module, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
        if ctx.world > 1
        else module
    )
    ema = make_ema(module, cfg, resumed_state)
    evaluated = ema.module if ema is not None else module  # what is validated and saved as model.pt
    accum = max(1, cfg.optim.grad_accum)
    total_updates = max(1, cfg.optim.epochs * math.ceil(steps_per_epoch / accum))  # a partial accumulation steps too
    warmup = int(cfg.optim.warmup_epochs * steps_per_epoch / accum)
    eval_cache = None
    if ctx.main:
        atomic_write_json(
            out / "train_config.json",
            cfg.to_dict() | {"classes": split.classes, "train_photos": len(split.train), "val_photos": len(split.val)},
        )

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
    if ctx.main and split.val and start_epoch == 0 and not history:  # the "before" row: the untrained model
        if cfg.freeze_stages:
            eval_cache = EvalCache(module, split, cfg, ctx.device)
        row0 = {"epoch": 0, "step": 0} | validate(evaluated, split, cfg, ctx.device, eval_cache)
        history.append(row0)
        log_row(out / "metrics.csv", row0)
    for epoch in range(start_epoch, cfg.optim.epochs):
        module.train()
        sampler.set_epoch(epoch)
        t0, seen, loss_sum, n_loss, micro = time.perf_counter(), 0, 0.0, 0, 0
        batches: list[tuple[Tensor, Tensor, Tensor]] | DataLoader[Any]
        if cached is not None:
            order = torch.tensor(list(iter(sampler)), dtype=torch.long)
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 10 + ctx.rank)
            view = torch.randint(cached.shape[1], (len(order),), generator=g)
            flip = torch.rand(len(order), generator=g) < (0.5 if cfg.data.flip else 0.0)
            batches = [
                (order[i : i + batch], view[i : i + batch], flip[i : i + batch])
                for i in batch_starts(len(order), batch)
            ]
        else:
            batches = loader
        with progress_bar(
            f"epoch {epoch + 1}/{cfg.optim.epochs}", total=steps_per_epoch, enabled=progress if ctx.main else False
        ) as bar:
            for b in batches:
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
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "loss": ctx.mean(loss_sum / max(1, n_loss)),
            "lr": max(g["lr"] for g in optimizer.param_groups),
            "images_per_s": ctx.mean(seen / max(elapsed, 1e-9)) * ctx.world,
            "epoch_s": elapsed,
        }
        last_epoch = epoch + 1 == cfg.optim.epochs or (max_steps is not None and step >= max_steps)
        if ctx.main and split.val and ((cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0) or last_epoch):
            if eval_cache is None and cfg.freeze_stages:
                eval_cache = EvalCache(module, split, cfg, ctx.device)
            row |= validate(evaluated, split, cfg, ctx.device, eval_cache)
        if ctx.main:
            history.append(row)
            log_row(out / "metrics.csv", row)
            score = row.get("val_map@100", -row["loss"])
            if score > best or not model_path.exists():
                best = score
                save_checkpoint(
                    model_path,
                    evaluated.net,
                    cfg.model,
                    {
                        "classes": split.classes,
                        "val_ids": [r.id for r in split.val],  # for calibration
                        "train_split": cfg.data.split,
                        "head": evaluated.head.state_dict() if evaluated.head is not None else None,
                        "head_kind": cfg.head.kind,
                        "epoch": epoch + 1,
                        "metrics": row,
                    },
                )
            with atomic_path(last_path) as tmp:
                torch.save(
                    {
                        "module": module.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch,
                        "step": step,
                        "history": history,
                        "best": best,
                        "rng": rng_state(),
                        "train_config": cfg.to_dict(),
                        "labels_digest": _labels_digest(split),
                        "ema": ema.state_dict() if ema is not None else None,
                    },
                    tmp,
                )
            log.info("epoch %d: %s", epoch + 1, json.dumps(row))
        ctx.barrier()
        if max_steps is not None and step >= max_steps:
            break
    return FitResult(model_path, last_path, history)


def _labels_digest(split: Split) -> str:
    """What a resumed run must train on again: every training and validation photo with its landmark."""
    pairs = sorted((r.id, r.landmark_id) for r in split.train + split.val)
    return hashlib.sha256(json.dumps([pairs, split.classes]).encode()).hexdigest()[:16]


def _saved_classes(path: Path) -> list[int] | None:
    try:
        return json.loads(path.read_text()).get("classes")
    except (OSError, ValueError):
        return None
