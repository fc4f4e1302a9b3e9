"""Distributed extraction on this machine: photos/s for 1, 2 and 4 Ray workers, the actor pool against a
Ray Data pipeline, and the overhead of one shard.

    python benchmarks/distributed.py [DATA] [--photos 192] [--workers 1,2,4] [--shard 16]
                                     [--schedulers actors,data] [--set KEY=VALUE ...] [--gpu-sizes 384,448]

DATA: a GLDv2-layout folder (default ``../shared/datasets/gldv2-mini``, or ``$LANDMARK_DATA``); its
first ``--photos`` train photos. The default preset's extractor (``--set`` overrides it).

- single process: ``GlobalExtractor.extract`` on the driver, no Ray (the reference);
- for each scheduler and worker count, a fresh local Ray (``num_cpus`` = workers) and
  ``extract_distributed``: wall time from the call to the result (Ray start, actors building their
  model, the shards), and the steady rate (photos of every shard after the first finished one, over the
  time between the first and the last finished shard, read from the chunk files' times; not for Ray
  Data, which hands the results to the driver in bursts);
- overhead per shard: 1 actor, shards of 4 against shards of 64 photos: the extra seconds divided by
  the extra shards.

With CUDA present, the GPU actor's photos/s at each ``--gpu-sizes`` image size (1 actor, 1 GPU);
otherwise that part is skipped and says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def timed_run(cfg, photos, workers: int, shard: int, scheduler: str, gpus: float = 0.0) -> dict:
    import ray

    from landmark.distributed import RayConfig, extract_distributed

    cache = Path(tempfile.mkdtemp(prefix="lm-dist-"))
    try:
        t0 = time.perf_counter()
        ray.init(num_cpus=workers, num_gpus=1 if gpus else None, include_dashboard=False, log_to_driver=False)
        t_init = time.perf_counter() - t0
        res = extract_distributed(
            cfg,
            photos,
            RayConfig(actors=workers, shard_size=shard, scheduler=scheduler, gpus_per_actor=gpus),
            cache_dir=cache,
            progress=False,
        )
        wall = time.perf_counter() - t0
        chunks = sorted(cache.glob("chunk-*.npz"), key=lambda p: p.stat().st_mtime)
        times = [p.stat().st_mtime for p in chunks]
        first = len(photos) and min(shard, len(photos))
        spread = times[-1] - times[0] if times else 0.0
        steady = (len(photos) - first) / spread if spread > 0 else float("nan")
        if scheduler == "data":  # Ray Data hands the driver its results in bursts: chunk times tell no rate
            steady = float("nan")
        return {
            "wall_s": wall,
            "init_s": t_init,
            "rate": len(res.ids) / wall,
            "steady": steady,
            "first_s": times[0] - (os.path.getmtime(cache / "signature.json")) if times else float("nan"),
        }
    finally:
        ray.shutdown()
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "data",
        nargs="?",
        type=Path,
        default=Path(os.environ.get("LANDMARK_DATA", HERE.parent / "shared/datasets/gldv2-mini")),
    )
    ap.add_argument("--photos", type=int, default=192)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--shard", type=int, default=16)
    ap.add_argument("--schedulers", default="actors,data")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--gpu-sizes", default="384,448")
    args = ap.parse_args()

    import torch

    from landmark.config import load_config
    from landmark.data import read_gldv2
    from landmark.features import GlobalExtractor

    cfg = load_config(overrides=args.overrides)
    photos = read_gldv2(args.data, "train").records[: args.photos]
    print(
        f"machine: {platform.platform()} | {os.cpu_count()} cores | torch {torch.__version__} | "
        f"{len(photos)} photos of {args.data.name}, {cfg.model.backbone} at {cfg.extract.image_size} px, "
        f"engine {cfg.extract.engine}, shards of {args.shard}"
    )

    t0 = time.perf_counter()
    local = GlobalExtractor.from_config(cfg, device="cpu")
    build_s = time.perf_counter() - t0
    local.extract(photos[:8], progress=False)  # warm-up (engine choice, allocator)
    t0 = time.perf_counter()
    local.extract(photos, progress=False)
    single = len(photos) / (time.perf_counter() - t0)
    print(f"single process, no Ray: {single:.1f} photos/s (model built in {build_s:.1f} s, not counted)")
    del local

    print(
        f"\n{'scheduler':>9s} {'workers':>7s} {'wall s':>7s} {'ray.init s':>10s} {'photos/s (wall)':>15s} "
        f"{'photos/s (steady)':>17s} {'first shard s':>13s}"
    )
    for scheduler in [s for s in args.schedulers.split(",") if s]:
        for w in [int(x) for x in args.workers.split(",") if x]:
            r = timed_run(cfg, photos, w, args.shard, scheduler)
            print(
                f"{scheduler:>9s} {w:7d} {r['wall_s']:7.1f} {r['init_s']:10.1f} {r['rate']:15.1f} "
                f"{r['steady']:17.1f} {r['first_s']:13.1f}"
            )

    small, large = 4, 64
    runs = {s: timed_run(cfg, photos, 1, s, "actors") for s in (small, large)}
    n_small, n_large = -(-len(photos) // small), -(-len(photos) // large)
    per_shard = (runs[small]["wall_s"] - runs[large]["wall_s"]) / (n_small - n_large)
    print(
        f"\noverhead per shard (1 actor): shards of {small}: {runs[small]['wall_s']:.1f} s, of {large}: "
        f"{runs[large]['wall_s']:.1f} s -> {1000 * per_shard:.0f} ms a shard"
    )

    if torch.cuda.is_available():
        from dataclasses import replace

        print(f"\nGPU ({torch.cuda.get_device_name(0)}): 1 actor, 1 GPU")
        for size in [int(s) for s in args.gpu_sizes.split(",") if s]:
            gcfg = replace(cfg, extract=replace(cfg.extract, image_size=size))
            r = timed_run(gcfg, photos, 1, max(args.shard, 64), "actors", gpus=1.0)
            print(f"  {size} px: {r['steady']:.1f} photos/s steady, {r['rate']:.1f} wall")
    else:
        print("\nno CUDA device here: the GPU actor's photos/s (384 / 448 px) is not measured")


if __name__ == "__main__":
    main()
