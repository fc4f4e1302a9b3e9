"""Training throughput: images/s of full training steps (decode + augment + forward + backward + update).

    python benchmarks/train.py [--data DIR] [--preset cpu-mini] [--set key=value ...] [--steps 20] [--random-init]

Runs the real pieces of ``landmark train`` (AugmentedPhotos + sampler + DataLoader workers, TrainModule,
optimizer, AMP on CUDA) over the labelled photos of DATA, without caching, and prints images/s for the
whole step and for the model step alone (batches already in device memory). ``--random-init`` skips
pretrained weights (e.g. ``timm/resnet152`` on a machine without internet).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from landmark.data import is_gldv2, read_folder, read_gldv2
from landmark.data.splits import split_by_photo
from landmark.models.backbones import create_backbone
from landmark.models.net import DescriptorNet
from landmark.models.pooling import make_pooling
from landmark.training import load_train_config
from landmark.training.data import AugmentedPhotos, collate_skip_none, make_sampler, train_transform
from landmark.training.module import TrainModule, make_head
from landmark.training.optim import make_optimizer as _optimizer
from landmark.utils.device import resolve_device


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("LANDMARK_DATA", here.parent / "shared/datasets/gldv2-mini"))
    ap.add_argument("--preset", default="cpu-mini")
    ap.add_argument("--set", action="append", default=[], help="training config override, e.g. optim.batch_size=64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--random-init", action="store_true")
    args = ap.parse_args()

    cfg = load_train_config(args.preset, overrides=["cache_views=0", *args.set])
    device = resolve_device(cfg.device)
    data = Path(args.data)
    manifest = read_gldv2(data, "train") if is_gldv2(data) else read_folder(data)
    split = split_by_photo(manifest.records, 0.0, cfg.data.min_per_class, cfg.seed)
    labels = split.labels(split.train)
    counts = torch.bincount(torch.tensor(labels)).tolist()
    m = cfg.model
    net = DescriptorNet(
        create_backbone(m.backbone, pretrained=not args.random_init),
        make_pooling(m.pooling, m.gem_p, m.gem_trainable),
        m.embedding_dim,
    )
    module = TrainModule(net, make_head(cfg, net.dim, counts), cfg).to(device).train()
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    opt = _optimizer(module, cfg)
    amp = cfg.optim.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    prep = net.preprocessing
    ds = AugmentedPhotos(split.train, labels, train_transform(cfg.data, prep.mean, prep.std), cfg.data.image_size * 2)
    sampler = make_sampler(
        cfg.data.sampler, labels, cfg.seed, num_samples=cfg.optim.batch_size * (args.steps + args.warmup)
    )
    loader = DataLoader(
        ds,
        batch_size=cfg.optim.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_skip_none,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss, _ = module(x, y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    kept = []
    n, t0 = 0, None
    for i, (x, y) in enumerate(loader):
        if i == args.warmup:
            sync()
            t0 = time.perf_counter()
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        step(x, y)
        if i >= args.warmup:
            n += len(y)
            if len(kept) < 4:
                kept.append((x, y))
    sync()
    full = n / (time.perf_counter() - t0)
    t1, m_n = time.perf_counter(), 0
    for _ in range(max(1, args.steps // len(kept))):
        for x, y in kept:
            step(x, y)
            m_n += len(y)
    sync()
    model_only = m_n / (time.perf_counter() - t1)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(
        f"machine: {platform.platform()} | {name} | torch {torch.__version__} | cpu threads {torch.get_num_threads()}"
    )
    print(
        f"preset {args.preset}: {m.backbone} {'random init' if args.random_init else 'pretrained'}, "
        f"{cfg.head.kind} head, embedding {m.embedding_dim}, crops {cfg.data.image_size}px, batch {cfg.optim.batch_size}, "
        f"amp {amp}, loader workers {cfg.data.num_workers}"
    )
    print(f"training step with data loading: {full:8.1f} images/s")
    print(f"model step only (batches on device): {model_only:8.1f} images/s")


if __name__ == "__main__":
    main()
