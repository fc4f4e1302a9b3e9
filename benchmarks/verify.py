"""Spatial verification throughput with cached local features: verified pairs per second, and where time goes.

Extracts RootSIFT (up to ``--max-keypoints``, long side 1024) of the largest photos of a GLDv2
root into a temporary local store (memory-mapped, as in a real store), then verifies every query
against a shortlist of ``--shortlist`` stored photos the way re-ranking does (one shortlist at a
time: read + prepare, mutual NN + ratio test, MAGSAC++ homography). Also times OpenCV's
brute-force kNN matcher + ratio test on a few pairs for comparison.

    PYTHONPATH=src python benchmarks/verify.py ../shared/datasets/gldv2-mini

With ``--combos`` it instead compares local-feature kinds x matchers at one size (default: the CPU
presets' 640 px, 512 keypoints, shortlists of 20): for each ``kind:matcher`` it extracts the photos
into a local store, then re-ranks each query like ``search`` does (extract the query, match and verify
its shortlist) and prints extraction photos/s, verified pairs/s and ms per query, on the CPU and,
where there is one, on the GPU (the card is named):

    python benchmarks/verify.py ../shared/datasets/gldv2-mini --combos \
        rootsift:mnn,aliked:lightglue,aliked:mnn,disk:lightglue,xfeat:lighterglue,xfeat:mnn
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from landmark.config import LocalConfig, RerankConfig
from landmark.data import probe_size, read_gldv2
from landmark.features.local import LocalExtractor, extract_many, rootsift
from landmark.index.local import LocalStore
from landmark.retrieval.rerank import Verifier


def combos(args, records) -> None:
    """Kinds x matchers at one size, as re-ranking runs them (one shortlist per query, query extraction included)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
        f"{torch.get_num_threads()}" + (f", GPU {torch.cuda.get_device_name(0)}" if "cuda" in devices else ", no GPU")
    )
    print(
        f"{args.queries} queries x shortlist {args.shortlist}, {args.image_size} px, <= {args.max_keypoints} keypoints; "
        f"load average {os.getloadavg()[0]:.1f} (a shared machine: wall figures are pessimistic)"
    )
    photos = records[: args.queries + args.shortlist]
    print(
        f"{'kind:matcher':<22} {'device':<7} {'extract photos/s':>16} {'pairs/s':>9} {'ms/query':>9} "
        f"{'mean inliers':>12}"
    )
    for combo in args.combos.split(","):
        kind, matcher = combo.split(":")
        for device in devices:
            if kind not in ("aliked", "disk", "xfeat") and device != "cpu":
                continue
            cfg = LocalConfig(
                kind=kind,
                image_size=args.image_size,
                max_keypoints=args.max_keypoints,
                num_workers=args.threads,
                device=device,
            )
            extractor = LocalExtractor(cfg)
            with tempfile.TemporaryDirectory() as tmp:
                store = LocalStore.create(Path(tmp) / "local", extractor.signature)
                extractor.extract_image(np.zeros((64, 64, 3), np.uint8))  # load the network: not timed
                t0 = time.perf_counter()
                extract_many(extractor, photos[args.queries :], store.add, progress=False)
                per_photo = (time.perf_counter() - t0) / max(1, len(photos) - args.queries)
                shortlist = [r.id for r in photos[args.queries :] if r.id in store]
                ver = Verifier(
                    LocalStore.open(Path(tmp) / "local"), RerankConfig(matcher=matcher, min_inliers=8, device=device)
                )
                ver.verify(extractor.extract_path(photos[0].path), shortlist[:2])  # warm-up (matcher loaded)
                ver.timings.pairs = 0
                inliers = []
                t0 = time.perf_counter()
                for r in photos[: args.queries]:
                    inliers += [v.inliers for v in ver.verify(extractor.extract_path(r.path), shortlist)]
                wall = time.perf_counter() - t0
                print(
                    f"{combo:<22} {device:<7} {1 / per_photo:>16.2f} {ver.timings.pairs / wall:>9.1f} "
                    f"{1000 * wall / args.queries:>9.0f} {np.mean(inliers):>12.1f}",
                    flush=True,
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--max-keypoints", type=int, default=None, help="default 2000 (--combos: 512)")
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--shortlist", type=int, default=None, help="default 100 (--combos: 20)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--combos", default="", help="kind:matcher,... (e.g. aliked:lightglue,xfeat:lighterglue)")
    ap.add_argument("--image-size", type=int, default=640, help="--combos: local.image_size")
    args = ap.parse_args()
    args.max_keypoints = args.max_keypoints or (512 if args.combos else 2000)
    args.shortlist = args.shortlist or (20 if args.combos else 100)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    records = read_gldv2(args.data, "index").records + read_gldv2(args.data, "test").records
    sized = sorted(records, key=lambda r: -np.prod(probe_size(r.path)))[: args.queries + args.shortlist]
    if args.combos:
        return combos(args, sized)
    cfg = LocalConfig(max_keypoints=args.max_keypoints, num_workers=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore.create(Path(tmp) / "local", LocalExtractor(cfg).signature)
        t0 = time.perf_counter()
        extract_many(LocalExtractor(cfg), sized, store.add, progress=False)
        t_extract = time.perf_counter() - t0
        keys = [r.id for r in sized if r.id in store]
        queries, shortlist = keys[: args.queries], keys[args.queries :]
        counts = np.array([len(store[k]) for k in keys])
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
            f"{torch.get_num_threads()}, OpenCV {cv2.__version__}"
        )
        print(
            f"photos: {len(keys)} (largest of {args.data.name}), keypoints per photo: mean {counts.mean():.0f}, "
            f"min {counts.min()}, max {counts.max()} (cap {args.max_keypoints}); extraction {len(keys) / t_extract:.1f} photos/s"
        )

        rer = RerankConfig()
        ver = Verifier(LocalStore.open(Path(tmp) / "local"), rer)  # a cold reader: I/O is part of the figure
        qfeats = store.get(queries)
        inliers = []
        t0, c0 = time.perf_counter(), time.process_time()
        for q in queries:
            inliers += [v.inliers for v in ver.verify(qfeats[q], shortlist)]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        t = ver.timings
        print(
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus (a shared machine: wall figures are pessimistic)"
        )
        print(
            f"verified {t.pairs} pairs in {wall:.2f} s: {t.pairs / wall:.1f} pairs/s "
            f"({1000 * wall / t.pairs:.2f} ms a pair); {t.pairs / cpu:.1f} pairs per CPU-second"
        )
        print(
            f"  read + prepare {t.io:.2f} s ({100 * t.io / wall:.0f}%), mutual NN + ratio test {t.matching:.2f} s "
            f"({100 * t.matching / wall:.0f}%), MAGSAC++ {t.ransac:.2f} s ({100 * t.ransac / wall:.0f}%)"
        )
        inl = np.array(inliers)
        print(f"  pairs verified (>= {rer.min_inliers} inliers): {(inl >= rer.min_inliers).sum()} of {len(inl)}")

        # the worst case: only photos at the keypoint cap
        full = [k for k, c in zip(keys, counts) if c >= args.max_keypoints]
        if len(full) >= 4:
            ver2 = Verifier(LocalStore.open(Path(tmp) / "local"), rer)
            fq, fs = full[: max(1, len(full) // 4)], full[max(1, len(full) // 4) :]
            feats_full = store.get(fq)
            t0, c0 = time.perf_counter(), time.process_time()
            for q in fq:
                ver2.verify(feats_full[q], fs)
            wall2, cpu2 = time.perf_counter() - t0, time.process_time() - c0
            t2 = ver2.timings
            print(
                f"pairs with {args.max_keypoints} keypoints on both sides ({len(full)} such photos): {t2.pairs} pairs, "
                f"{t2.pairs / wall2:.1f} pairs/s, {t2.pairs / cpu2:.1f} pairs per CPU-second; read + prepare {100 * t2.io / wall2:.0f}%, matching "
                f"{100 * t2.matching / wall2:.0f}%, MAGSAC++ {100 * t2.ransac / wall2:.0f}%"
            )

        # the naive path for comparison: OpenCV brute force kNN (k=2) + ratio test, per pair
        bf = cv2.BFMatcher(cv2.NORM_L2)
        qd = rootsift(np.asarray(qfeats[queries[0]].descriptors))
        cands = [rootsift(np.asarray(store[k].descriptors)) for k in shortlist[:20]]
        t0 = time.perf_counter()
        for c in cands:
            [m for m, n in (p for p in bf.knnMatch(qd, c, k=2) if len(p) == 2) if m.distance < rer.ratio * n.distance]
        naive = (time.perf_counter() - t0) / len(cands)
        print(f"OpenCV BFMatcher knnMatch + ratio test alone: {1000 * naive:.1f} ms a pair ({1 / naive:.1f} pairs/s)")


if __name__ == "__main__":
    main()
