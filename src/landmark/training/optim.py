"""Optimisation: parameter groups (a slower backbone), the optimizer, the warm-up + decay schedule, and EMA."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from .config import OPTIMIZERS, SCHEDULES, TrainConfig
from .module import TrainModule

log = logging.getLogger(__name__)


def lr_factor(step: int, total: int, warmup: int, cfg) -> float:
    """Multiplier of the base learning rate at ``step`` (linear warm-up, then the schedule)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return SCHEDULES[cfg.schedule](t, cfg.final_lr / cfg.lr, cfg)


# optim.schedule: the multiplier at progress t in [0, 1] of the decay, down to floor = final_lr / lr
def cosine_decay(t: float, floor: float, cfg: Any) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def step_decay(t: float, floor: float, cfg: Any) -> float:
    return 0.1 ** sum(t >= m for m in cfg.step_milestones)


def exp_decay(t: float, floor: float, cfg: Any) -> float:
    return floor ** min(1.0, t)


def param_groups(module: TrainModule, cfg: TrainConfig) -> list[dict[str, Any]]:
    backbone = {id(p) for p in module.net.backbone.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in module.parameters():
        if not p.requires_grad:
            continue
        key = (id(p) in backbone, p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    o = cfg.optim
    return [
        {
            "params": ps,
            "lr": o.lr * (o.backbone_lr_mult if is_bb else 1.0),
            "base_lr_mult": o.backbone_lr_mult if is_bb else 1.0,
            "weight_decay": 0.0 if no_wd else o.weight_decay,
        }
        for (is_bb, no_wd), ps in groups.items()
    ]


def make_optimizer(module: TrainModule, cfg: TrainConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optim.optimizer](param_groups(module, cfg), cfg.optim)


# optim.optimizer: the optimizer over parameter groups (weight decay and learning rate set per group)
def sgd(groups: list[dict[str, Any]], o: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=True)


def adam(groups: list[dict[str, Any]], o: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=o.lr)


def adamw(groups: list[dict[str, Any]], o: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=o.lr)


def make_ema(module: TrainModule, cfg: TrainConfig, resumed: dict[str, Any] | None):
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
