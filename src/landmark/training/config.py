"""Typed training configuration and its named presets (``landmark train --preset NAME``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.config import HEADS, ModelConfig, check_models
from ..utils.config import ConfigError, check_values, layered, to_dict
from ..utils.registry import Registry


@dataclass
class HeadConfig:
    kind: str = "arcface"  # arcface | subcenter_arcface | cosface | softmax | bce | npairs
    scale: float = 30.0
    margin: float = 0.3
    subcenters: int = 3  # sub-center ArcFace only
    dynamic_margin: bool = False  # per-class margins from class frequency (GLR 2020 winners)
    margin_low: float = 0.05
    margin_high: float = 0.5
    label_smoothing: float = 0.0  # softmax / arcface / cosface cross-entropy


@dataclass
class TrainDataConfig:
    image_size: int = 384  # side of the square random-resized training crops
    crop_scale: tuple[float, ...] = (0.35, 1.0)
    zoom_out: float = 1.0  # > 1: with probability zoom_out_p a crop shrinks by up to this factor
    zoom_out_p: float = 0.5  # onto a mean-colour canvas (a small landmark in a wide view)
    flip: bool = True
    color_jitter: float = 0.2
    min_per_class: int = 2  # classes with fewer photos are dropped
    val_fraction: float = 0.15  # photos of each class held out for validation
    sampler: str = "balanced"  # balanced | inverse_freq | random
    epoch_samples: int = 0  # photos drawn per epoch (0 = as many as training photos)
    num_workers: int = 1
    split: str = "train"  # the GLDv2 split trained on (a folder dataset has one)
    labels: str | None = None  # CSV of id,landmark_id replacing the split's labels, e.g. the
    # index clusters of `landmark cluster` (photos it does not name are left out)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1  # backbone learns at lr * this
    final_lr: float = 1e-5  # cosine / exponential schedules end here
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | step | exp
    step_milestones: tuple[float, ...] = (0.6, 0.85)  # fractions of training, step schedule (x0.1 each)
    warmup_epochs: float = 0.5
    epochs: int = 10
    batch_size: int = 32
    grad_accum: int = 1
    amp: bool = True  # float16 autocast + grad scaling on CUDA
    clip_grad: float = 5.0
    ema: float = 0.0  # > 0: validate and save an exponential moving average of the weights
    # (this decay per update, torch's AveragedModel); 0 = the weights as trained


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(embedding_dim=512, gem_trainable=True))
    head: HeadConfig = field(default_factory=HeadConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    freeze_stages: int = 0  # backbone stages kept frozen (0 = fine-tune everything)
    cache_views: int = 0  # > 0 (needs freeze_stages): precompute the frozen stages' output for
    # this many augmented crops per photo, then train only the rest
    init: str = "pretrained"  # pretrained: FC embedding = PCA of the pooled ImageNet features and
    # cosine-head centres = class means, so training starts from the
    # off-the-shelf descriptor | random: the layers' default init
    init_photos: int = 20000  # training photos (at most) whose features fit that initialisation
    backbone_weights: str = "pretrained"  # the backbone's starting weights: pretrained (ImageNet, or the hub's for
    # timm/<name>) | random (from scratch; what tests of hub models use offline)
    eval_image_size: int = 384  # validation extraction (long side, aspect kept)
    eval_every: int = 1  # epochs between validations
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on a laptop CPU: EfficientNet-Lite2, its last stages fine-tuned on cached crops. The
    # GeM descriptor itself (1280-d, no FC) is trained: with 17 classes a PCA-initialised 512-d FC
    # layer validated worse (val mAP@100 0.84 after 8 epochs, GeM without FC 0.88 after 6 and 0.93
    # after 10). Chosen on the validation split, never on test; the preset's own run reaches 0.97.
    "cpu-mini": {
        "model": {"backbone": "tf_efficientnet_lite2", "embedding_dim": None, "gem_trainable": True},
        "head": {"kind": "arcface", "scale": 30.0, "margin": 0.3},
        "data": {"image_size": 288, "crop_scale": [0.4, 1.0], "min_per_class": 2, "val_fraction": 0.15},
        "optim": {
            "optimizer": "adamw",
            "lr": 1e-3,
            "backbone_lr_mult": 0.1,
            "epochs": 10,
            "batch_size": 32,
            "warmup_epochs": 0.5,
        },
        "freeze_stages": 6,
        "cache_views": 4,
    },
    # The Stanford report: ResNet50 + GeM, classes with >= 250 photos, 128 px crops, Adam 1e-3 -> 1e-5, batch 128,
    # a plain (BCE) classifier head. ResNet50 weights come from the timm hub (needs internet).
    "gldv2-stanford": {
        "model": {"backbone": "timm/resnet50", "embedding_dim": None, "gem_trainable": True},
        "head": {"kind": "bce"},
        "data": {"image_size": 128, "crop_scale": [0.25, 1.0], "min_per_class": 250, "num_workers": 8},
        "optim": {
            "optimizer": "adam",
            "lr": 1e-3,
            "final_lr": 1e-5,
            "schedule": "exp",
            "epochs": 20,
            "batch_size": 128,
            "backbone_lr_mult": 1.0,
            "weight_decay": 0.0,
        },
        "eval_image_size": 256,
    },
    # The Baidu GLR19 recipe: ArcMargin head on an FC-512 embedding, 448 px, SGD, label smoothing.
    "gldv2-baidu": {
        "model": {"backbone": "timm/resnet152", "embedding_dim": 512, "gem_trainable": True},
        "head": {"kind": "arcface", "scale": 30.0, "margin": 0.3, "label_smoothing": 0.1},
        "data": {"image_size": 448, "crop_scale": [0.3, 1.0], "min_per_class": 2, "num_workers": 8},
        "optim": {
            "optimizer": "sgd",
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "epochs": 10,
            "batch_size": 64,
            "backbone_lr_mult": 1.0,
            "schedule": "cosine",
            "warmup_epochs": 1.0,
        },
        "eval_image_size": 448,
    },
}


def load_train_config(
    preset: str | None = None, file: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> TrainConfig:
    """``preset <- YAML file <- overrides``, as :func:`landmark.config.load_config` does for inference
    (checked by :func:`check_train`)."""
    return check_train(layered(TrainConfig(), TRAIN_PRESETS, preset or "cpu-mini", "training preset", file, overrides))


OPTIMIZERS = Registry("optim.optimizer", {name: f"landmark.training.optim:{name}" for name in ("adamw", "adam", "sgd")})
SCHEDULES = Registry(
    "optim.schedule", {name: f"landmark.training.optim:{name}_decay" for name in ("cosine", "step", "exp")}
)
LOSSES = Registry("loss", {name: f"landmark.training.losses:{name}" for name in ("cross_entropy", "bce", "npairs")})
INITS = ("pretrained", "random")
SAMPLER_POWERS = {"balanced": 0.0, "inverse_freq": 0.5, "random": 1.0}  # p(photo) ~ n(class) ** (power - 1)
TRAIN_SPLITS = ("train", "index")  # GLDv2 splits training reads; index only with data.labels
MINIMUMS = {
    "data.image_size": 32,
    "data.min_per_class": 1,
    "data.epoch_samples": 0,
    "data.num_workers": 0,
    "optim.epochs": 1,
    "optim.batch_size": 2,
    "optim.grad_accum": 1,
    "head.subcenters": 1,
    "freeze_stages": 0,
    "cache_views": 0,
    "eval_image_size": 32,
    "eval_every": 0,
}


def check_train(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` if its choices exist and its counts are in range, else a :class:`ConfigError` naming
    the key (before any photo is read)."""
    check_models([cfg.model], "model")
    check_values(
        cfg,
        {
            "head.kind": HEADS,
            "optim.optimizer": OPTIMIZERS,
            "optim.schedule": SCHEDULES,
            "data.sampler": tuple(SAMPLER_POWERS),
            "init": INITS,
            "backbone_weights": INITS,
        },
        MINIMUMS,
    )
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: expected a share in [0, 1), got {cfg.data.val_fraction}")
    if cfg.data.zoom_out < 1.0 or not 0.0 <= cfg.data.zoom_out_p <= 1.0:
        raise ConfigError(
            f"data.zoom_out / data.zoom_out_p: expected a factor >= 1 and a probability, got "
            f"{cfg.data.zoom_out} / {cfg.data.zoom_out_p}"
        )
    if cfg.optim.ema and not 0.0 < cfg.optim.ema < 1.0:
        raise ConfigError(f"optim.ema: expected 0 (off) or a decay in (0, 1), got {cfg.optim.ema}")
    if cfg.data.split not in TRAIN_SPLITS:
        raise ConfigError(
            f"data.split: expected one of {', '.join(TRAIN_SPLITS)} (never the test queries), got {cfg.data.split!r}"
        )
    if cfg.data.split != "train" and not cfg.data.labels:
        raise ConfigError(
            f"data.split={cfg.data.split}: that split is unlabelled; give data.labels "
            "(e.g. the CSV `landmark cluster --split index` writes)"
        )
    if cfg.cache_views and not cfg.freeze_stages:
        raise ConfigError("cache_views needs freeze_stages > 0 (only frozen stages can be cached)")
    return cfg


@dataclass
class DelfTrainConfig:
    """``landmark train-delf``: DELF's attention head on a frozen backbone's mid-level features (image-level
    labels only), then the PCA of the selected features. The defaults are the ``cpu-mini`` recipe: minutes
    on 2 CPU cores for gldv2-mini's train split (benchmarks/RESULTS.md)."""

    backbone: str = "tf_efficientnet_lite2"  # the store's network (ModelConfig.backbone's default)
    stage: int = 0  # stages whose output are the features; 0 = up to the last at stride 16
    sizes: tuple[int, ...] = (224, 320)  # square training sizes, one drawn per batch (DELF's random
    # rescaling); the frozen features of every photo at each are cached once
    hidden: int = 256  # attention head: 1x1 conv to this many channels, ReLU, 1x1 conv, softplus
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3  # Adam
    weight_decay: float = 1e-4
    val_fraction: float = 0.15  # held-out photos per landmark (classification accuracy only)
    min_per_class: int = 2
    pca_dim: int = 64  # descriptor dimensions after PCA (DELF: 40)
    pca_power: float = 1.0  # 1 = PCA-whitening (components of equal variance), 0 = plain PCA
    pca_shrinkage: float = 0.0  # fraction of the mean eigenvalue added to each (tames whitening's tail)
    pca_per_photo: int = 100  # highest-attention features per training photo the PCA is learned on
    scales: tuple[float, ...] = (0.25, 0.3536, 0.5, 0.7071, 1.0)  # extraction pyramid (stored in the checkpoint)
    batch_photos: int = 16  # photos per forward pass while caching features
    seed: int = 0
    device: str = "auto"


DELF_PRESETS: dict[str, dict[str, Any]] = {"cpu-mini": {}}
DELF_MINIMUMS = {
    "stage": 0,
    "hidden": 1,
    "epochs": 1,
    "batch_size": 1,
    "pca_dim": 1,
    "pca_per_photo": 1,
    "batch_photos": 1,
    "min_per_class": 1,
}


def load_delf_config(
    preset: str | None = None, file: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> DelfTrainConfig:
    """``preset <- YAML file <- overrides`` for ``landmark train-delf`` (checked before any photo is read)."""
    cfg = layered(DelfTrainConfig(), DELF_PRESETS, preset or "cpu-mini", "DELF training preset", file, overrides)
    check_values(cfg, {}, DELF_MINIMUMS)
    check_models([ModelConfig(backbone=cfg.backbone)], "backbone")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction: expected a share in [0, 1), got {cfg.val_fraction}")
    if not cfg.sizes or min(cfg.sizes) < 32 or not cfg.scales or min(cfg.scales) <= 0:
        raise ConfigError(f"sizes / scales: expected sizes >= 32 and scales > 0, got {cfg.sizes} / {cfg.scales}")
    return cfg
