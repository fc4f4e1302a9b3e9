"""Load test of `landmark serve` on 127.0.0.1: concurrent clients doing what the web page does.

    python benchmarks/serve_load.py --store runs/serve-store --clients 20 --duration 60
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 5 --duration 10

Each client loops over a "page visit": POST /recognize with a real photo, then GET the thumbnails
of its top matches (as the page does); every 5th visit is a POST /search instead. Halfway through,
one extra client adds a held-out photo with POST /images. At the end the script checks that every
request got an answer (none lost), that the added photo is in the store and is the top hit when
searching with it, then removes it again (unless --keep). It prints requests/s, p50/p95/p99
latency per request kind and overall, the error count, and the machine.

With --store it starts the server itself (a subprocess, 127.0.0.1, a free port) and stops it after;
with --url it uses a running server, which must be on this machine (127.0.0.1 / localhost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

HERE = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.platform()} | {cpu} | {os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))}) | load avg {load:.1f}"


def photos_from(args) -> list[Path]:
    if args.photos:
        paths = [p for a in args.photos for p in (sorted(Path(a).rglob("*.jpg")) if Path(a).is_dir() else [Path(a)])]
    else:
        test = Path(args.data) / "test"
        paths = sorted(test.rglob("*.jpg"))
    if len(paths) < 2:
        sys.exit(f"need at least 2 photos (got {len(paths)}); pass --photos or --data")
    random.Random(0).shuffle(paths)
    return paths


def start_server(store: Path, settings: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable,
        "-m",
        "landmark.cli",
        "serve",
        "--store",
        str(store),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for s_ in settings:
        cmd += ["--set", s_]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.terminate()
    sys.exit("server did not start within 300 s")


class Stats:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.error_samples: list[str] = []
        self.sent = 0
        self.answered = 0

    async def call(self, client: httpx.AsyncClient, kind: str, method: str, url: str, **kw) -> httpx.Response | None:
        self.sent += 1
        t0 = time.perf_counter()
        try:
            r = await client.request(method, url, **kw)
        except httpx.HTTPError as exc:
            self.errors[kind] += 1
            self.error_samples.append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        self.answered += 1
        self.lat[kind].append(time.perf_counter() - t0)
        if r.status_code >= 400:
            self.errors[kind] += 1
            self.error_samples.append(f"{kind}: HTTP {r.status_code}: {r.text[:200]}")
        return r


async def client_loop(i: int, url: str, photos: list[tuple[str, bytes]], stop_at: float, stats: Stats, timeout: float):
    rng = random.Random(i)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as c:
        visit = 0
        while time.monotonic() < stop_at:
            name, data = photos[rng.randrange(len(photos))]
            visit += 1
            if visit % 5 == 0:
                await stats.call(c, "POST /search", "POST", "/search?k=10", files={"photo": (name, data, "image/jpeg")})
                continue
            r = await stats.call(
                c, "POST /recognize", "POST", "/recognize", files={"photo": (name, data, "image/jpeg")}
            )
            if r is not None and r.status_code == 200:
                for m in r.json()["matches"]:
                    if time.monotonic() >= stop_at:
                        break
                    await stats.call(c, "GET thumbnail", "GET", m["thumbnail"])


async def writer(url: str, photo: tuple[str, bytes], image_id: str, at: float, stats: Stats, timeout: float) -> dict:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as c:
        t0 = time.perf_counter()
        r = await stats.call(
            c,
            "POST /images",
            "POST",
            "/images",
            files={"photo": (photo[0], photo[1], "image/jpeg")},
            data={"id": image_id},
        )
        return {
            "status": None if r is None else r.status_code,
            "latency_s": time.perf_counter() - t0,
            "body": None if r is None else r.json(),
        }


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--store", type=Path, help="start `landmark serve` on this store (it gets one photo added, then removed)"
    )
    where.add_argument("--url", help="a running server on this machine, e.g. http://127.0.0.1:8000")
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument(
        "--data",
        default=os.environ.get("LANDMARK_DATA", HERE.parent / "shared/datasets/gldv2-mini"),
        help="GLDv2 root whose test photos are the queries",
    )
    ap.add_argument("--photos", nargs="*", help="query photos or folders instead of DATA/test")
    ap.add_argument("--n-photos", type=int, default=64, help="distinct query photos held in memory")
    ap.add_argument("--timeout", type=float, default=300.0, help="client timeout per request, s")
    ap.add_argument("--set", action="append", default=[], help="service setting for the started server")
    ap.add_argument("--keep", action="store_true", help="keep the photo added during the load")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.clients < 1 or args.duration <= 0:
        sys.exit("--clients must be >= 1 and --duration > 0")

    proc = None
    if args.store:
        proc, url = start_server(args.store, args.set)
    else:
        url = args.url.rstrip("/")
        if urlparse(url).hostname not in ("127.0.0.1", "localhost"):
            sys.exit("this load test only runs against 127.0.0.1 / localhost")
    try:
        paths = photos_from(args)
        held_out, queries = paths[0], paths[1 : 1 + args.n_photos]
        photos = [(p.name, p.read_bytes()) for p in queries]
        before = httpx.get(url + "/health", timeout=30).json()
        print(f"machine: {machine()}")
        print(
            f"server: {url} store of {before['images']} photos, model {before['model']} | "
            f"{args.clients} clients for {args.duration:.0f} s | {len(photos)} query photos"
        )

        async def run() -> tuple[Stats, dict, float]:
            stats = Stats()
            start = time.monotonic()
            stop_at = start + args.duration
            image_id = f"bench-{uuid.uuid4().hex[:10]}"
            tasks = [client_loop(i, url, photos, stop_at, stats, args.timeout) for i in range(args.clients)]
            w = asyncio.create_task(
                writer(
                    url,
                    (held_out.name, held_out.read_bytes()),
                    image_id,
                    start + args.duration / 2,
                    stats,
                    args.timeout,
                )
            )
            await asyncio.gather(*tasks)
            added = await w
            added["id"] = image_id
            return stats, added, time.monotonic() - start

        stats, added, wall = asyncio.run(run())

        # the write: committed, visible, and the top hit for its own photo
        after = httpx.get(url + "/health", timeout=30).json()
        meta = httpx.get(f"{url}/images/{added['id']}", timeout=30)
        hit = httpx.post(
            url + "/search?k=5", files={"photo": (held_out.name, held_out.read_bytes(), "image/jpeg")}, timeout=120
        ).json()["matches"][0]
        searchable = meta.status_code == 200 and hit["id"] == added["id"]
        if not args.keep and meta.status_code == 200:
            httpx.delete(f"{url}/images/{added['id']}", timeout=120)

        all_lat = [x for v in stats.lat.values() for x in v]
        n_err = sum(stats.errors.values())
        print(
            f"\n{'request':<16} {'count':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6}"
        )
        rows = {}
        for kind in sorted(stats.lat) + ["all"]:
            lat = all_lat if kind == "all" else stats.lat[kind]
            errs = n_err if kind == "all" else stats.errors[kind]
            rows[kind] = {
                "count": len(lat),
                "rps": len(lat) / wall,
                "p50_ms": 1e3 * pct(lat, 50),
                "p95_ms": 1e3 * pct(lat, 95),
                "p99_ms": 1e3 * pct(lat, 99),
                "max_ms": 1e3 * max(lat) if lat else float("nan"),
                "errors": errs,
            }
            r = rows[kind]
            print(
                f"{kind:<16} {r['count']:>7} {r['rps']:>7.2f} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} "
                f"{r['p99_ms']:>8.0f} {r['max_ms']:>8.0f} {r['errors']:>6}"
            )
        lost = stats.sent - stats.answered
        print(f"\nwall {wall:.1f} s | sent {stats.sent} | answered {stats.answered} | lost {lost} | errors {n_err}")
        print(
            f"POST /images during the load: HTTP {added['status']} in {added['latency_s'] * 1e3:.0f} ms; store "
            f"{before['images']} -> {after['images']} photos (generation {before['generation']} -> {after['generation']}); "
            f"added photo searchable afterwards: {searchable} (top hit {hit['id']} score {hit['score']:.4f})"
        )
        for s in stats.error_samples[:10]:
            print("  error:", s)
        ok = n_err == 0 and lost == 0 and searchable and after["images"] == before["images"] + 1
        print("RESULT:", "PASS" if ok else "FAIL")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "machine": machine(),
                        "clients": args.clients,
                        "duration_s": args.duration,
                        "wall_s": wall,
                        "rows": rows,
                        "sent": stats.sent,
                        "lost": lost,
                        "errors": n_err,
                        "write": {k: added[k] for k in ("id", "status", "latency_s")},
                        "searchable": searchable,
                        "images_before": before["images"],
                        "images_after": after["images"],
                        "pass": ok,
                    },
                    indent=2,
                )
            )
        sys.exit(0 if ok else 1)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
