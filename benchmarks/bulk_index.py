"""A 1M-photo compressed store built shard by shard: build time, peak RAM, recall.

    python benchmarks/bulk_index.py [--sizes 1000000] [--shard 100000] [--store runs/demo/store]
                                    [--work runs/bulk-index] [--skip-incremental]

Synthetic 256-d descriptors (``benchmarks/latency.py``'s generator: clusters of ~50 with the real
store's PCA spectrum, read from ``--store`` when it exists, else a 1/i decay) are written once to a
``.npy`` on disk with the exact top-100 of 200 queries. Then, each in a fresh process that reads the
file shard by shard (plain reads, no memory map):

- ``bulk``: :func:`landmark.index.bulk.bulk_load` (IVF-PQ trained on a sample of 40 vectors per cell, at least
  100k, filled shard by shard, the full vectors streamed to disk, SQLite rows per shard, one commit);
- ``incremental``: ``Store.add`` per shard (what ``landmark index import`` did before: trains on
  the first shard once past ``index.train_min``, rewrites the vectors file at every commit).

For each: wall time, peak resident memory (``ru_maxrss``) and the peak of anonymous memory sampled
every 20 ms (``RssAnon``: without the file cache of the memory-mapped vectors), the store on disk;
then, in another fresh process, recall@10 / @100 of the store's search (k = 100) against exact search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "benchmarks"))
QUERIES = 200


def anon_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class PeakAnon:
    """The highest ``RssAnon`` seen, sampled every 20 ms in a thread."""

    def __init__(self):
        self.start = self.peak = anon_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, anon_kib())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_kib())


def generate(work: Path, n: int, store: Path) -> None:
    """The vectors file, labels, queries and their exact top-100 (once per size)."""
    import latency

    if (work / "exact.npy").is_file():
        return
    work.mkdir(parents=True, exist_ok=True)
    eig = latency.spectrum(store)
    x, labels = latency.synthetic_store_vectors(n, eig)
    np.save(work / "vectors.npy", x)
    np.save(work / "labels.npy", labels)
    q = latency.synthetic_store_vectors(QUERIES, eig, seed=99)[0]
    np.save(work / "queries.npy", q)
    top = np.concatenate([np.argsort(-(q[i : i + 20] @ x.T), axis=1)[:, :100] for i in range(0, QUERIES, 20)])
    np.save(work / "exact.npy", top)
    (work / "spectrum.json").write_text(json.dumps({"real": (store / "meta.sqlite").is_file()}))


def build(work: Path, how: str, shard: int) -> dict:
    """Run in a fresh process: build ``work/<how>`` from the vectors file."""
    import shutil

    from landmark.config import load_config
    from landmark.index import Store
    from landmark.index.bulk import npy_shards, sample_shards, train_size

    root = work / how
    shutil.rmtree(root, ignore_errors=True)
    labels = np.load(work / "labels.npy").tolist()
    n = len(labels)
    ids = [f"s{i:07d}" for i in range(n)]
    cfg = load_config(overrides=["index.kind=ivfpq", f"index.train_min={min(50_000, shard)}"])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with PeakAnon() as peak:
        store = Store.create(root, cfg, {"model": {"backbone": "synthetic"}, "dim": 256})
        shards = npy_shards(work / "vectors.npy", ids, shard, landmark_ids=labels)
        if how == "bulk":
            from landmark.index.bulk import bulk_load

            # the training sample in a first pass over the file, read as the shards are (no memory map)
            sample = sample_shards(npy_shards(work / "vectors.npy", ids, shard), n, train_size(n, cfg.index))
            bulk_load(store, shards, n, sample, progress=False)
        else:
            for s in shards:
                store.add(list(s.ids), s.vectors, landmark_ids=list(s.landmark_ids), split="index")
        store.close()
    wall = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "how": how,
        "photos": n,
        "wall_s": wall,
        "peak_rss_mib": peak_rss / 1024,
        "start_rss_mib": base / 1024,
        "start_anon_mib": peak.start / 1024,
        "peak_anon_mib": peak.peak / 1024,
        "disk_mib": disk / 2**20,
    }


def search(work: Path, how: str) -> dict:
    """Run in a fresh process: the store's search against exact search."""
    from landmark.index import Store

    q, exact = np.load(work / "queries.npy"), np.load(work / "exact.npy")
    store = Store.open(work / how)
    r10, r100, times = [], [], []
    for i in range(len(q)):
        t0 = time.perf_counter()
        res = store.search(q[i : i + 1], 100)
        times.append(time.perf_counter() - t0)
        got = [int(k[1:]) for k in res.keys[0] if k]
        r10.append(len(set(got[:10]) & set(exact[i, :10].tolist())) / 10)
        r100.append(len(set(got) & set(exact[i].tolist())) / 100)
    info = store.info()
    return {
        "recall_at_10": float(np.mean(r10)),
        "recall_at_100": float(np.mean(r100)),
        "search_p50_ms": 1000 * float(np.median(times[1:])),
        "index": info["compressed"]["index"],
        "nprobe": info["compressed"]["nprobe"],
        "bytes_per_vector": info["bytes_per_vector"],
    }


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000")
    ap.add_argument("--shard", type=int, default=100_000)
    ap.add_argument("--store", type=Path, default=HERE / "runs/demo/store")
    ap.add_argument("--work", type=Path, default=HERE / "runs/bulk-index")
    ap.add_argument("--skip-incremental", action="store_true")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, work, *rest = args.child
        if kind == "generate":
            generate(Path(work), int(rest[0]), Path(rest[1]))
            print("{}")
        elif kind == "build":
            print(json.dumps(build(Path(work), rest[0], int(rest[1]))))
        else:
            print(json.dumps(search(Path(work), rest[0])))
        return

    import faiss

    print(
        f"machine: {platform.platform()} | {os.cpu_count()} cores | faiss {faiss.__version__} | "
        f"shards of {args.shard:,} photos"
    )
    print(
        "RSS = ru_maxrss; anon = RssAnon sampled every 20 ms; 'start' = after imports (numpy, FAISS, the package), "
        "before the build"
    )
    print(
        f"{'photos':>9s} {'build':>12s} {'wall s':>7s} {'peak RSS MiB (start)':>21s} {'peak anon MiB (start)':>22s} "
        f"{'disk MiB':>9s} {'recall@10':>9s} {'recall@100':>10s} {'search p50 ms':>13s}  index"
    )
    for n in [int(s) for s in args.sizes.split(",") if s]:
        work = args.work / f"synthetic-{n}"
        child("generate", str(work), str(n), str(args.store))
        real = json.loads((work / "spectrum.json").read_text())["real"]
        for how in ["bulk"] + ([] if args.skip_incremental else ["incremental"]):
            b = child("build", str(work), how, str(args.shard))
            s = child("search", str(work), how)
            rss = f"{b['peak_rss_mib']:.0f} ({b['start_rss_mib']:.0f})"
            anon = f"{b['peak_anon_mib']:.0f} ({b['start_anon_mib']:.0f})"
            print(
                f"{n:9d} {how:>12s} {b['wall_s']:7.1f} {rss:>21s} {anon:>22s} "
                f"{b['disk_mib']:9.0f} {s['recall_at_10']:9.3f} {s['recall_at_100']:10.3f} "
                f"{s['search_p50_ms']:13.1f}  {s['index']} nprobe {s['nprobe']}"
            )
        print(
            f"          (float32 vectors of the whole collection: {n * 256 * 4 / 2**20:,.0f} MiB; "
            f"spectrum: {'the real store' if real else '1/i decay (no store at --store)'})"
        )


if __name__ == "__main__":
    main()
