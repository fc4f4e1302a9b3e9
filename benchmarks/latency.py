"""Latency: store open, first and steady query, for the CLI, the API and the service, on a real
store; and on synthetic stores of 100k and 1M photos imported through the store's write path.

    python benchmarks/latency.py [--store runs/demo/store] [--queries DIR_OR_GLDV2_ROOT]
                                 [--sizes 100000,1000000] [--work runs/latency] [--skip-real] [--skip-synthetic]

Real store (the demo's, or any): ``Landmarks.open`` time; per query photo, the parts of a
recognition one after the other (extract = the query's global views, search = the store's top
100, recognize = the whole ``Landmarks.recognize``: extract, search, filters, local verification)
for the first query and the steady state (median of the rest); ``landmark recognize ONE.jpg`` wall
time in a fresh process; the service (``create_app``) start-up and ``POST /recognize`` p50 / p95.

Synthetic stores: 256-d unit vectors in clusters of ~50 with the real store's PCA spectrum
(``benchmarks/ann.py``'s generator; a PCA-256 store, as the default preset makes),
imported with ``Landmarks.import_vectors`` into a compressed (``index.kind=ivfpq``) store; then,
in a fresh process, the store's open time and resident memory (``Store.open``: what grows with the
photos; ``Landmarks.open`` adds the model, its engine and a warm-up, the same at any size), its
bytes on disk per photo, search
p50 / p95 (k = 100, one query at a time, extraction excluded), recall@10 and @100 against exact search, and
recognition (top-5 vote and filters over the index) p50 per query.

``--dba`` (issue 24): on the same synthetic stores, DBA as a store job through the index
(``Landmarks.expand``, what ``landmark index expand`` runs) in a fresh process: its time, throughput
and peak memory; the bytes each photo adds on disk (the augmented vectors, float16, and their codes)
and in RAM (the augmented index's codes, read when first searched); then search p50 / p95 per query
(k = 100, extraction excluded) without expansion, with DBA alone (the augmented index) and with DBA +
alpha-QE. ``--dba-limit N`` augments only the first N photos of a larger store (a timed slice, resumed
by the next run: the job keeps its commits) and extrapolates the whole job from its throughput; the
searches of such a store expand queries only (QE through the plain index), as search does there.
Verification: ``expansion.verify=threshold`` (0.5): the synthetic stores' landmarks are random, not
their clusters, so a vote would verify almost no neighbour and DBA would cost less than on real photos.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
DIM = 256


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def rss_bytes() -> int:
    """Anonymous resident memory: what the process holds (the memory-mapped vectors' pages are the
    OS's file cache, reclaimable, and counted apart: :func:`file_bytes`)."""
    return _status_kib("RssAnon") * 1024


def file_bytes() -> int:
    return _status_kib("RssFile") * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# -- a real store --------------------------------------------------------------------------------
def query_photos(source: Path, n: int) -> list[Path]:
    from landmark.data.manifests import is_gldv2, read_gldv2, read_photos

    if is_gldv2(source):
        manifest = read_gldv2(source, "test")
        solution = source / "recognition_solution.csv"
        if solution.is_file():  # landmark photos first: the ones whose recognition does all the work
            import csv

            with open(solution, newline="") as fh:
                landmarks = [r["id"] for r in csv.DictReader(fh) if r.get("landmarks")]
            by_id = {r.id: r for r in manifest.records}
            return [Path(by_id[i].path) for i in landmarks if i in by_id][:n]
        return [Path(r.path) for r in manifest.records[:n]]
    return [Path(r.path) for r in read_photos([source]).records[:n]]


def real_store(store: Path, photos: list[Path]) -> dict:
    from PIL import Image

    from landmark.api import Landmarks

    t0 = time.perf_counter()
    lm = Landmarks.open(store)
    open_s = time.perf_counter() - t0
    rows = []
    for p in photos:
        img = Image.open(p).convert("RGB")
        t0 = time.perf_counter()
        vecs, _ = lm.embedding.query_views_of_images([img])
        t1 = time.perf_counter()
        lm.store.search(vecs[:1], 100)
        t2 = time.perf_counter()
        lm.recognize([p])
        t3 = time.perf_counter()
        rows.append({"extract": t1 - t0, "search": t2 - t1, "recognize": t3 - t2})
    first, rest = rows[0], rows[1:]
    steady = {k: statistics.median(r[k] for r in rest) for k in first} if rest else first
    return {"open_s": open_s, "first": first, "steady": steady, "queries": len(rows)}


def cli_wall(store: Path, photo: Path) -> float:
    exe = Path(sys.executable).with_name("landmark")
    t0 = time.perf_counter()
    subprocess.run(
        [str(exe), "recognize", str(photo), "--store", str(store), "--json", "--no-progress"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def service(store: Path, photos: list[Path]) -> dict:
    from fastapi.testclient import TestClient

    from landmark.service.app import create_app

    t0 = time.perf_counter()
    app = create_app(store)
    with TestClient(app) as client:
        start_s = time.perf_counter() - t0
        times = []
        for p in photos:
            data = p.read_bytes()
            t0 = time.perf_counter()
            r = client.post("/recognize", files={"photo": (p.name, data, "image/jpeg")})
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
    return {
        "start_s": start_s,
        "first_ms": 1000 * times[0],
        "p50_ms": 1000 * pct(times[1:], 50),
        "p95_ms": 1000 * pct(times[1:], 95),
    }


# -- synthetic stores ----------------------------------------------------------------------------
def spectrum(store: Path) -> np.ndarray:
    """PCA eigenvalues of a real store's descriptors (256 of them), so synthetic vectors spread as
    real ones do; a 1/i decay without a store."""
    if (store / "meta.sqlite").is_file():
        from landmark.features.whitening import learn_whitening
        from landmark.index import Store

        with Store.open(store) as st:
            vectors = st.vectors(st.keys())
        if len(vectors) > DIM and st.dim >= DIM:
            return learn_whitening(vectors, DIM, power=0.0).eigenvalues.astype(np.float32)
    return (1.0 / np.arange(1, DIM + 1)).astype(np.float32)


def synthetic_store_vectors(n: int, eig: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors in clusters of ~50 (``benchmarks/ann.py``'s generator: the real spectrum,
    log-normal spreads), and each one's cluster as its landmark."""
    import ann  # benchmarks/ann.py (imported here: it pins BLAS threads to 1 for what loads after it)

    rng = np.random.default_rng(seed)
    clusters = max(10, n // 50)
    x = np.concatenate(list(ann.synthetic(n, eig, rng, clusters, spread=1.2, sigma=0.6)))
    labels = np.random.default_rng(seed + 1).integers(0, clusters, n)  # landmarks for the vote (not the geometry)
    return x, labels


def make_synthetic_store(root: Path, n: int, eig: np.ndarray) -> dict:
    from landmark.api import Landmarks
    from landmark.config import load_config
    from landmark.features.pipeline import WHITENING_FILE
    from landmark.features.whitening import learn_whitening

    cfg = load_config(overrides=["whitening.kind=pca", "index.kind=ivfpq", "local.enabled=false"])
    root.mkdir(parents=True, exist_ok=True)
    if not (root / WHITENING_FILE).is_file():  # a PCA-256 store: as `index build` learns one from its photos
        rng = np.random.default_rng(1)
        sample = rng.standard_normal((2000, 1280)).astype(np.float32)
        learn_whitening(sample / np.linalg.norm(sample, axis=1, keepdims=True), DIM).save(root / WHITENING_FILE)
    done = root / "import.json"
    if done.is_file():  # imported by an earlier run: its figures
        return json.loads(done.read_text())
    x, labels = synthetic_store_vectors(n, eig)
    t0 = time.perf_counter()
    lm = Landmarks.create(root, cfg)
    report = lm.import_vectors(
        x, [f"s{i:07d}" for i in range(n)], landmark_ids=labels.tolist(), batch_size=250_000, progress=False
    )
    out = {"import_s": time.perf_counter() - t0, "added": report.added["index"], "skipped": report.skipped["index"]}
    done.write_text(json.dumps(out))
    return out


def measure_synthetic(root: Path, n: int, eig: np.ndarray, queries: int = 200) -> dict:
    """Run in a fresh process: open time and resident memory are the store's alone. Queries are
    fresh vectors from the same generator (not in the store); recall against exact search."""
    from landmark.api import Landmarks

    x, _ = synthetic_store_vectors(n, eig)
    q = synthetic_store_vectors(queries, eig, seed=99)[0]
    exact = np.argsort(-(q @ x.T), axis=1)[:, :100]
    del x
    from landmark.index import Store

    before = rss_bytes()
    t0 = time.perf_counter()
    store = Store.open(root)  # the store alone: what grows with its photos
    store_open_s = time.perf_counter() - t0
    store_bytes = rss_bytes() - before
    info = store.info()
    store.close()
    before = rss_bytes()
    t0 = time.perf_counter()
    lm = Landmarks.open(root)  # + the model, its engine and a warm-up query
    open_s = time.perf_counter() - t0
    opened = rss_bytes()
    search, recall = [], []
    for i in range(queries):
        t0 = time.perf_counter()
        res = lm.store.search(q[i : i + 1], 100)
        search.append(time.perf_counter() - t0)
        got = [int(k[1:]) for k in res.keys[0] if k]
        recall.append(
            (len(set(got[:10]) & set(exact[i, :10].tolist())) / 10, len(set(got) & set(exact[i].tolist())) / 100)
        )
    recog = []
    for i in range(min(queries, 100)):
        t0 = time.perf_counter()
        lm.recognising.recognize_vectors(q[i : i + 1], ids=[f"q{i}"])
        recog.append(time.perf_counter() - t0)
    after = rss_bytes()
    cached = file_bytes()
    disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and "engines" not in f.parts)
    return {
        "photos": len(lm.store),
        "store_open_s": store_open_s,
        "open_s": open_s,
        "store_ram_bytes_per_photo": store_bytes / n,
        "model_ram_mib": (opened - before) / 2**20,
        "queries_ram_mib": (after - opened) / 2**20,
        "file_cache_mib": cached / 2**20,
        "disk_bytes_per_photo": disk / n,
        "search_p50_ms": 1000 * pct(search[1:], 50),
        "search_p95_ms": 1000 * pct(search[1:], 95),
        "search_first_ms": 1000 * search[0],
        "recall_at_10": float(np.mean([r[0] for r in recall])),
        "recall_at_100": float(np.mean([r[1] for r in recall])),
        "recognize_p50_ms": 1000 * pct(recog[1:], 50),
        "recognize_p95_ms": 1000 * pct(recog[1:], 95),
        "index": info.get("compressed", {}).get("index", info.get("index_kind")),
        "bytes_per_vector": info.get("bytes_per_vector"),
        "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


class PeakAnon:
    """The largest :func:`rss_bytes` seen while it runs (sampled every 50 ms in a thread)."""

    def __enter__(self) -> PeakAnon:
        import threading

        self.peak, self._stop = rss_bytes(), threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def dba_config(store):
    import dataclasses

    return dataclasses.replace(store.config.expansion, verify="threshold", threshold=0.5)


def measure_dba(root: Path, n: int, limit: int | None, restart: bool = False) -> dict:
    """In a fresh process: the DBA job over ``root`` (at most ``limit`` photos this run; ``restart``:
    from the first photo, as ``landmark index expand --restart``)."""
    import faiss

    from landmark.index import Store
    from landmark.index.augmented import AugmentedVectors
    from landmark.retrieval.augment import augment_store

    store = Store.open(root)
    opened = rss_bytes()
    before = AugmentedVectors(store).counts()
    with PeakAnon() as peak:
        report = augment_store(store, dba_config(store), vote_k=5, limit=limit, restart=restart, progress=False)
    out: dict = {
        "threads": faiss.omp_get_max_threads(),
        "augmented_before": sum(before),
        "augmented": report.augmented,
        "remaining": report.remaining,
        "job_s": report.seconds,
        "photos_per_s": report.augmented / max(report.seconds, 1e-9),
        "job_peak_anon_mib": (peak.peak - opened) / 2**20,
        "job_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "status": report.status.line,
    }
    if report.remaining:
        out["extrapolated_job_s"] = n / out["photos_per_s"]
    return out


def measure_dba_search(root: Path, n: int, eig: np.ndarray, queries: int = 200) -> dict:
    """In a fresh process: the memory the augmented set's index takes when opened, its bytes on disk,
    and search p50 / p95 without expansion, with DBA alone and with DBA + alpha-QE (each query runs
    every mode in turn, after a warm-up pass, so that a busy machine slows them alike)."""
    from landmark.index import Store
    from landmark.index.augmented import AugmentedVectors
    from landmark.retrieval.augment import IndexedExpansion

    q = synthetic_store_vectors(queries, eig, seed=99)[0]
    store = Store.open(root)
    aug = AugmentedVectors(store)
    out: dict = {}
    if aug.indexed:
        ram = rss_bytes()
        t0 = time.perf_counter()
        index = aug.index()
        out["aug_open_s"] = time.perf_counter() - t0
        out["ram_bytes_per_photo"] = (rss_bytes() - ram) / n
        out["index_bytes_per_photo"] = getattr(index, "bytes_per_vector", float("nan"))
        out["disk_bytes_per_photo"] = aug.describe()["disk_bytes"] / n
    expanded = IndexedExpansion(store, dba_config(store), None, vote_k=5)
    out["dba_searched"] = expanded.dba
    modes = {
        "plain": lambda x: store.search(x, 100),
        "dba": lambda x: expanded.rank(x, 100, qe=False),
        "dba_qe": lambda x: expanded.rank(x, 100, qe=True),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    for i in range(queries):  # warm-up: the pages of the vectors the queries touch
        for search in modes.values():
            search(q[i : i + 1])
    for i in range(queries):
        for name, search in modes.items():
            t0 = time.perf_counter()
            search(q[i : i + 1])
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        out[f"{name}_p50_ms"] = 1000 * pct(ts, 50)
        out[f"{name}_p95_ms"] = 1000 * pct(ts, 95)
    out["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=HERE / "runs/demo/store")
    ap.add_argument(
        "--queries",
        type=Path,
        default=Path(os.environ.get("LANDMARK_DATA", HERE.parent / "shared/datasets/gldv2-mini")),
    )
    ap.add_argument("--n-queries", type=int, default=20)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--work", type=Path, default=HERE / "runs/latency")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true", help="skip the synthetic stores' search figures")
    ap.add_argument("--dba", action="store_true", help="measure DBA / alpha-QE through the index (issue 24)")
    ap.add_argument("--dba-limit", type=int, help="augment at most this many photos of a larger store, and extrapolate")
    ap.add_argument("--dba-restart", action="store_true", help="augment every photo again (else a run goes on)")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child process: one synthetic store
    ap.add_argument("--measure-dba", type=Path, help=argparse.SUPPRESS)  # child process: its DBA job
    ap.add_argument("--measure-dba-search", type=Path, help=argparse.SUPPRESS)  # and its searches
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure_synthetic(args.measure, args.n, np.load(args.measure / "spectrum.npy"))))
        return
    if args.measure_dba:
        limit = args.dba_limit if args.dba_limit and args.dba_limit < args.n else None
        print(json.dumps(measure_dba(args.measure_dba, args.n, limit, args.dba_restart)))
        return
    if args.measure_dba_search:
        eig = np.load(args.measure_dba_search / "spectrum.npy")
        print(json.dumps(measure_dba_search(args.measure_dba_search, args.n, eig)))
        return

    import torch

    print(
        f"machine: {platform.platform()} | {os.cpu_count()} cores | torch {torch.__version__} "
        f"threads={torch.get_num_threads()}"
    )
    if not args.skip_real:
        if not (args.store / "meta.sqlite").is_file():
            print(f"no store at {args.store} (make demo builds one): real-store figures skipped")
        else:
            photos = query_photos(args.queries, args.n_queries)
            api = real_store(args.store, photos)
            print(f"\n## {args.store}: {len(photos)} query photos")
            print(f"API: open {api['open_s']:.2f} s")
            print(f"{'part':12s} {'first s':>8s} {'steady s':>9s}")
            for k in api["first"]:
                print(f"{k:12s} {api['first'][k]:8.3f} {api['steady'][k]:9.3f}")
            print(f"CLI: `landmark recognize ONE.jpg` wall {cli_wall(args.store, photos[0]):.2f} s (fresh process)")
            sv = service(args.store, photos)
            print(
                f"service: start {sv['start_s']:.2f} s; POST /recognize first {sv['first_ms']:.0f} ms, "
                f"p50 {sv['p50_ms']:.0f} ms, p95 {sv['p95_ms']:.0f} ms"
            )
    if not args.skip_synthetic:
        synthetic_figures(args)
    if args.dba:
        dba_figures(args)


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def dba_figures(args) -> None:
    print(
        "\n## DBA / alpha-QE through the index (Landmarks.expand = `landmark index expand`), "
        "expansion.verify=threshold 0.5, shortlist 300; search k=100, one query at a time"
    )
    for n in [int(s) for s in args.sizes.split(",") if s]:
        root = args.work / f"synthetic-{n}"
        # the spectrum the store was made with, where it was saved (the queries must come from it)
        eig = np.load(root / "spectrum.npy") if (root / "spectrum.npy").is_file() else spectrum(args.store)
        built = make_synthetic_store(root, n, eig)
        np.save(root / "spectrum.npy", eig)
        extra = (["--dba-limit", str(args.dba_limit)] if args.dba_limit else []) + (
            ["--dba-restart"] if args.dba_restart else []
        )
        m = child("--measure-dba", str(root), "--n", str(n), *extra)
        m |= child("--measure-dba-search", str(root), "--n", str(n))
        whole = (
            f"{m['job_s']:.0f} s" if not m["remaining"] else f"~{m['extrapolated_job_s'] / 60:.0f} min (extrapolated)"
        )
        print(
            f"{n:,} photos (imported in {built['import_s']:.1f} s): augmented {m['augmented']:,} this run "
            f"({m['augmented_before']:,} before) in {m['job_s']:.1f} s = {m['photos_per_s']:.0f} photos/s, "
            f"whole job {whole}; peak anonymous memory +{m['job_peak_anon_mib']:.0f} MiB, max RSS "
            f"{m['job_max_rss_gib']:.2f} GiB ({m['threads']} FAISS threads)"
        )
        if "disk_bytes_per_photo" in m:
            print(
                f"    augmented set: {m['disk_bytes_per_photo']:.0f} B/photo on disk, "
                f"{m['ram_bytes_per_photo']:.0f} B/photo in RAM when opened ({m['index_bytes_per_photo']:.0f} B "
                f"of FAISS codes, ids and centroids; opened in {m['aug_open_s']:.2f} s)"
            )
        qe = "DBA + alpha-QE" if m["dba_searched"] else "alpha-QE alone (no complete DBA set)"
        print(
            f"    search p50 / p95 ms: no expansion {m['plain_p50_ms']:.1f} / {m['plain_p95_ms']:.1f}; "
            f"{'DBA' if m['dba_searched'] else 'plain via IndexedExpansion'} {m['dba_p50_ms']:.1f} / "
            f"{m['dba_p95_ms']:.1f}; {qe} {m['dba_qe_p50_ms']:.1f} / {m['dba_qe_p95_ms']:.1f}"
        )
        print(f"    {json.dumps(m)}")


def synthetic_figures(args) -> None:
    print(f"\n## synthetic stores ({DIM}-d, index.kind=ivfpq), imported with Landmarks.import_vectors")
    print(
        f"{'photos':>9s} {'import s':>9s} {'store open s':>12s} {'open s':>7s} {'RAM B/photo':>12s} "
        f"{'disk B/photo':>13s} {'search p50 ms':>14s} {'p95 ms':>7s} {'recall@10':>9s} {'recall@100':>10s} "
        f"{'recognize p50 ms':>17s}"
    )
    for n in [int(s) for s in args.sizes.split(",") if s]:
        root = args.work / f"synthetic-{n}"
        eig = spectrum(args.store)
        built = make_synthetic_store(root, n, eig)
        np.save(root / "spectrum.npy", eig)
        m = child("--measure", str(root), "--n", str(n))
        print(
            f"{m['photos']:9d} {built['import_s']:9.1f} {m['store_open_s']:12.2f} {m['open_s']:7.2f} "
            f"{m['store_ram_bytes_per_photo']:12.0f} {m['disk_bytes_per_photo']:13.0f} "
            f"{m['search_p50_ms']:14.1f} {m['search_p95_ms']:7.1f} {m['recall_at_10']:9.3f} {m['recall_at_100']:10.3f} "
            f"{m['recognize_p50_ms']:17.1f}"
        )
        print(
            f"          {json.dumps({k: m[k] for k in ('index', 'bytes_per_vector', 'model_ram_mib', 'queries_ram_mib', 'file_cache_mib', 'search_first_ms', 'recognize_p95_ms', 'max_rss_gib')})}"
        )


if __name__ == "__main__":
    main()
