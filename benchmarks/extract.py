"""Extraction throughput, engine against engine, in one run: the full pipeline (probe + decode +
resize + batch + forward + pooling) and each engine's bare speed on the very same batches.

    python benchmarks/extract.py [--data DIR] [--split train] [--n 256] [--preset P]
                                 [--engines torch,onnxruntime,openvino] [--device cpu]

For each engine it prints images/s of ``GlobalExtractor.extract`` on real photos, images/s of the
engine alone on the same batches already decoded in memory, and the pipeline's share of that bare
speed. ``torch (default allocator)`` is eager torch with glibc's allocator left as it is, measured
in a child process (the allocator setting is process-wide): the speed before ``tune_cpu_allocator``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from landmark.config import load_config
from landmark.data.manifests import read_dataset
from landmark.features import GlobalExtractor
from landmark.features.engine import available_engines
from landmark.features.extract import _Photos, bucket_batches


def measure(cfg, items, engine: str, device: str | None) -> dict:
    cfg = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, engine=engine))
    t0 = time.perf_counter()
    ex = GlobalExtractor.from_config(cfg, device=device)
    ex.trunk.engine()  # export / compile: paid once per network
    ready_s = time.perf_counter() - t0
    ex.extract(items[: cfg.extract.batch_size], progress=False)  # warm-up
    t0 = time.perf_counter()
    res = ex.extract(items, progress=False)
    pipeline_s = time.perf_counter() - t0

    # the same batches, decoded beforehand: only the engine (and pooling) is timed
    kept = [it for it in items if it.id in res.sizes]
    shapes = [ex.target_shape(*res.sizes[it.id]) for it in kept]
    ds = _Photos([str(it.path) for it in kept], shapes, ex.net.preprocessing.mean, ex.net.preprocessing.std)
    batches = [torch.stack([ds[i][1] for i in b]) for b in bucket_batches(shapes, cfg.extract.batch_size)]
    t0 = time.perf_counter()
    for b in batches:
        ex.embed_batch(b)
    if ex.device.type == "cuda":
        torch.cuda.synchronize()
    forward_s = time.perf_counter() - t0
    n = len(res.ids)
    return {
        "engine": type(ex.trunk.engine()).__name__,
        "photos": n,
        "batches": len(batches),
        "unreadable": len(res.failures),
        "ready_s": ready_s,
        "pipeline": n / pipeline_s,
        "bare": n / forward_s,
    }


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("LANDMARK_DATA", here.parent / "shared/datasets/gldv2-mini"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=256, help="photos to extract")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. extract.batch_size=32")
    ap.add_argument("--device", default=None)
    ap.add_argument("--engines", default=None, help="comma-separated (default: every installed one, and auto)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one engine, for the child process
    args = ap.parse_args()

    cfg = load_config(args.preset, overrides=args.set)
    items = read_dataset(args.data, args.split).records[: args.n]
    if args.json:
        print(json.dumps(measure(cfg, items, args.engines, args.device)))
        return
    engines = args.engines.split(",") if args.engines else [*available_engines(), "auto"]
    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cores | "
        f"torch {torch.__version__} threads={torch.get_num_threads()}"
    )
    print(
        f"model: {cfg.model.backbone} {cfg.model.pooling} size={cfg.extract.image_size} "
        f"scales={cfg.extract.scales} batch={cfg.extract.batch_size} workers={cfg.extract.num_workers} | "
        f"{len(items)} photos of {args.data} ({args.split})"
    )
    rows = []
    if "torch" in engines:  # the allocator as glibc leaves it: a fresh process that does not tune it
        cmd = [
            sys.executable,
            __file__,
            "--json",
            "--engines",
            "torch",
            "--n",
            str(args.n),
            "--data",
            str(args.data),
            "--split",
            args.split,
            *(["--preset", args.preset] if args.preset else []),
            *(a for s in args.set for a in ("--set", s)),
            *(["--device", args.device] if args.device else []),
        ]
        out = subprocess.run(
            cmd, env=os.environ | {"LANDMARK_MALLOC_TUNING": "0"}, capture_output=True, text=True, check=True
        )
        rows.append(("torch (default allocator)", json.loads(out.stdout.strip().splitlines()[-1])))
    for engine in engines:
        rows.append((engine, measure(cfg, items, engine, args.device)))
    base = rows[0][1]["pipeline"]
    print(
        f"photos: {rows[0][1]['photos']} ({rows[0][1]['unreadable']} unreadable) in {rows[0][1]['batches']} "
        "shape buckets/batches"
    )
    print(
        f"{'engine':28s} {'runs as':20s} {'ready s':>8s} {'pipeline img/s':>15s} {'bare img/s':>11s} "
        f"{'share':>6s} {'vs first':>8s}"
    )
    for name, r in rows:
        print(
            f"{name:28s} {r['engine']:20s} {r['ready_s']:8.2f} {r['pipeline']:15.1f} {r['bare']:11.1f} "
            f"{100 * r['pipeline'] / r['bare']:5.0f}% {r['pipeline'] / base:7.2f}x"
        )


if __name__ == "__main__":
    main()
