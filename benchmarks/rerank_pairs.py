"""Spatial re-ranking of one dev set's global shortlists with the stores that ``benchmarks/quality.py`` built,
side by side on the very same shortlists (e.g. RootSIFT against a learned kind): a cheaper check than the
suite where a learned matcher on a CPU cannot verify every query's evidence and shortlist in time.

    python benchmarks/rerank_pairs.py ../shared/datasets/hard-dev runs/q-rootsift/hard-dev runs/q-aliked-cpu/hard-dev \\
        --top-k 10

Each RUN is a quality run's folder for DATA (``RUN/store``, its cached query features in
``RUN/_work/local-test``, turned ones in ``rotated-*``). The global ranking is plain kNN over the store's
vectors; its top ``--top-k`` are verified with the store's own re-ranking settings. Prints, per run,
mAP@100 of the global and the re-ranked ranking, seconds per query, and the verified inliers of
relevant and of other shortlisted photos (how well verification tells them apart).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from landmark.api import Landmarks
from landmark.data import read_gldv2
from landmark.evaluation.run import evaluation_plan
from landmark.index.local import LocalStore
from landmark.metrics import mean_average_precision_at_k
from landmark.retrieval import rank
from landmark.retrieval.rerank import rerank_shortlist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--top-k", type=int, default=10)
    args = ap.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} (shared: wall figures are pessimistic)"
    )
    test = read_gldv2(args.data, "test")
    solution = evaluation_plan(args.data).solution.restricted(test.ids()).retrieval
    print(
        f"{'run':<28} {'local':<22} {'global':>7} {'reranked':>8} {'s/query':>8}  inliers: relevant | others "
        f"(median, max)"
    )
    for run in args.runs:
        lm = Landmarks.open(run / "store")
        queries = lm.embed(test, progress=False, cache_dir=run / "_work" / "extract-test", queries=False)
        ranked = rank(lm.store, queries.vectors, 100, splits=["index"])
        cfg = lm.config.rerank
        lm.ctx.config = dataclasses.replace(lm.config, rerank=dataclasses.replace(cfg, top_k=args.top_k))
        lm.ctx.set_local(lm.local)  # a verifier of the new settings
        cache = LocalStore.open(run / "_work" / "local-test")
        turned = [
            t
            for r in cfg.rotations
            if r % 360  # turned queries where the suite got to extract them
            if (t := LocalStore.open_if_exists(run / "_work" / "local-test" / f"rotated-{r % 360}")) is not None
        ]
        glob, rer, rel_inl, oth_inl = {}, {}, [], []
        t0 = time.perf_counter()
        for q, r in zip(queries.ids, ranked):
            glob[q] = list(r.keys)
            if q not in solution or q not in cache:
                rer[q] = list(r.keys)
                continue
            feats = [cache[q]] + [t[q] for t in turned if q in t]
            out = rerank_shortlist(lm.ctx.verifier, feats if len(feats) > 1 else feats[0], list(r.keys), list(r.scores))
            rer[q] = out.keys
            for key, inl in zip(out.keys, out.inliers):
                if inl >= 0:
                    (rel_inl if key in solution[q] else oth_inl).append(int(inl))
        per_q = (time.perf_counter() - t0) / max(1, sum(q in solution for q in queries.ids))
        sig = lm.local.signature
        local = f"{sig['kind']}/{cfg.matcher} {sig['image_size']}px" + (
            "" if turned or not cfg.rotations else " upright"
        )
        stats = lambda v: f"{np.median(v):.0f}, {max(v)}" if v else "-"  # noqa: E731
        print(
            f"{str(run)[-28:]:<28} {local:<22} {mean_average_precision_at_k(glob, solution):>7.4f} "
            f"{mean_average_precision_at_k(rer, solution):>8.4f} {per_q:>8.2f}  {stats(rel_inl)} | {stats(oth_inl)} "
            f"({len(rel_inl)} relevant, {len(oth_inl)} other pairs; >= {cfg.min_inliers} counts)",
            flush=True,
        )


if __name__ == "__main__":
    main()
