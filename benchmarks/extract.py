"""Extraction throughput: the full pipeline (decode + resize + batch + forward) vs the bare forward.

    python benchmarks/extract.py [--data DIR] [--split train] [--n 256] [--preset lite2-gem] [--device auto]

Prints images/s for ``GlobalExtractor.extract`` on real photos, and for the model's forward alone
on the very same batches already in memory, so the difference is the pipeline's overhead.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from landmark.config import load_config
from landmark.data.manifests import read_dataset
from landmark.features import GlobalExtractor
from landmark.features.extract import _Photos, bucket_batches


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("LANDMARK_DATA", here.parent / "shared/datasets/gldv2-mini"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=256, help="photos to extract")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. extract.batch_size=32")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    cfg = load_config(args.preset, overrides=args.set)
    manifest = read_dataset(args.data, args.split)
    items = manifest.records[: args.n]
    ex = GlobalExtractor.from_config(cfg, device=args.device)
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"torch {torch.__version__} threads={torch.get_num_threads()} | device {ex.device}")
    print(f"model: {cfg.model.backbone} {cfg.model.pooling} p={cfg.model.gem_p} size={cfg.extract.image_size} "
          f"scales={cfg.extract.scales} batch={cfg.extract.batch_size} workers={cfg.extract.num_workers}")

    ex.extract(items[: cfg.extract.batch_size], progress=False)           # warm-up
    t0 = time.perf_counter()
    res = ex.extract(items, progress=False)
    pipeline_s = time.perf_counter() - t0

    # the same batches, decoded beforehand: only the forward pass is timed
    shapes = [ex.target_shape(*res.sizes[it.id]) for it in items if it.id in res.sizes]
    kept = [it for it in items if it.id in res.sizes]
    ds = _Photos([str(it.path) for it in kept], shapes, ex.net.preprocessing.mean, ex.net.preprocessing.std)
    batches = [torch.stack([ds[i][1] for i in b]) for b in bucket_batches(shapes, cfg.extract.batch_size)]
    t0 = time.perf_counter()
    for b in batches:
        ex.embed_batch(b)
    if ex.device.type == "cuda":
        torch.cuda.synchronize()
    forward_s = time.perf_counter() - t0

    n = len(res.ids)
    print(f"photos: {n} ({len(res.failures)} unreadable) in {len(batches)} shape buckets/batches")
    print(f"pipeline: {n / pipeline_s:8.1f} images/s  ({pipeline_s:.2f} s)")
    print(f"forward : {n / forward_s:8.1f} images/s  ({forward_s:.2f} s)")
    print(f"overhead: {100 * (pipeline_s - forward_s) / pipeline_s:5.1f} % of pipeline time")


if __name__ == "__main__":
    main()
