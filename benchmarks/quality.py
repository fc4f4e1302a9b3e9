"""The quality suite: `landmark evaluate` on every dev set at once, printed side by side.

    python benchmarks/quality.py [DATASET ...] [--out runs/quality] [--preset P] [--set key=value ...]
    make quality

Without DATASET, every dataset under $LANDMARK_DATA's parent (or ../shared/datasets) that has a GLDv2
layout with a test split and a solution: gldv2-mini, gldv2-mini-sparse, gldv2-mini-unlabelled,
hard-dev. Prints one side-by-side table (plain kNN vs submitted mAP@100, kNN-only vs pipeline GAP,
the robustness checks) and, per set, the submitted pipeline stage by stage; writes OUT/quality.json
after each set. Stores are kept in OUT/<set>/store and reused by the next run with the same
configuration (use --overwrite after changing it), so a second run only re-evaluates.
Every quality claim is made with this table, never with one set alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from landmark.config import load_config
from landmark.evaluation.quality import find_datasets, render, run_suite

REPO = Path(__file__).resolve().parents[1]


def default_base() -> Path:
    data = os.environ.get("LANDMARK_DATA")
    return Path(data).parent if data else REPO.parent / "shared" / "datasets"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "datasets", nargs="*", type=Path, help="dataset roots (default: every one under the datasets folder)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "quality")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--overwrite", action="store_true", help="rebuild every store (after a configuration change)")
    ap.add_argument(
        "--calibrate",
        dest="calibrate",
        action="store_const",
        const=True,
        default=None,
        help="refit every store's calibration (default: where it never was, or is stale)",
    )
    ap.add_argument("--no-calibrate", dest="calibrate", action="store_const", const=False)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(width=max(Console().width, 130))
    if args.datasets:
        roots = args.datasets
    else:
        found = find_datasets(default_base())
        roots = found.roots
        for name, why in found.skipped.items():
            console.print(f"[yellow]skipped {name}:[/] {why}")
    if not roots:
        console.print(f"[red]no dataset to evaluate under {default_base()}[/]")
        return 2
    console.print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} cores | torch {torch.__version__} | threads {torch.get_num_threads()}"
    )
    t0 = time.perf_counter()
    suite = run_suite(
        roots,
        args.out,
        lambda: load_config(args.preset, overrides=args.overrides),
        progress=args.progress,
        calibrate=args.calibrate,
        overwrite=args.overwrite,
        on_set=lambda name, s: console.print(f"{name}: done in {s['seconds']:.0f} s"),
    )
    render(suite, console)
    console.print(f"{len(suite['sets'])} sets in {time.perf_counter() - t0:.0f} s; {args.out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
