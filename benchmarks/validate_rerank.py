"""Tune re-ranking on a validation split carved from ``train`` (never on test).

Leave-one-out on ``train``: every ``--every``-th labelled train photo of each landmark (in id
order), and every photo of the full-resolution landmarks 900001-900006 (only 4 each), is a query
against all other train photos. Global ranking = exact inner product of the stored global vectors;
re-ranking verifies the global top-K with the stored local features. Prints mAP@100 of the global
ranking and of each re-ranking setting (matching: ratio, model, threshold; combination:
min_inliers, weight, saturation), overall and on the full-resolution landmarks 900001-900006.

    PYTHONPATH=src python benchmarks/validate_rerank.py --store runs/demo/store
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import platform
import time

import numpy as np

from landmark.config import RerankConfig
from landmark.index import Store
from landmark.index.local import LOCAL_DIR, LocalStore
from landmark.metrics import mean_average_precision_at_k
from landmark.retrieval.rerank import Verifier, combine

FULLRES = set(range(900001, 900007))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--every", type=int, default=6, help="hold out every N-th train photo per landmark as a query")
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--ratios", default="0.8,0.85,0.9")
    ap.add_argument("--models", default="homography")
    ap.add_argument("--thresholds", default="8")
    ap.add_argument("--min-inliers", default="5,6,8,10,12,15,20")
    ap.add_argument("--load", help="re-use the inlier counts of a --dump file (tunes only the combination)")
    ap.add_argument("--show", type=int, default=10, help="print the N best settings")
    ap.add_argument("--dump", help="write the inlier counts and relevance of every verified pair to this .npz")
    args = ap.parse_args()

    store = Store.open(args.store)
    local = LocalStore.open(store.root / LOCAL_DIR)
    keys = store.keys("train")
    rows = store.get(keys)
    by_label: dict[int, list[str]] = {}
    for k in sorted(keys):
        if rows[k].landmark_id is not None:
            by_label.setdefault(rows[k].landmark_id, []).append(k)
    # leave-one-out: every --every-th photo of each landmark, and every photo of the few full-resolution
    # landmarks, is a query against all other train photos
    queries = [
        k
        for lab, ks in by_label.items()
        for i, k in enumerate(ks)
        if i % args.every == args.every // 2 or lab in FULLRES
    ]
    db = [k for ks in by_label.values() for k in ks]
    label = {k: rows[k].landmark_id for k in keys}
    solution = {q: [d for d in db if label[d] == label[q] and d != q] for q in queries}
    full = {q: r for q, r in solution.items() if label[q] in FULLRES}

    qv, dv = store.vectors(queries), store.vectors(db)
    sims = qv @ dv.T
    pos = {k: j for j, k in enumerate(db)}
    sims[np.arange(len(queries)), [pos[q] for q in queries]] = -np.inf  # a query never finds itself
    top = np.argsort(-sims, axis=1)[:, : args.top_k]
    g_keys = {q: [db[j] for j in top[i]] for i, q in enumerate(queries)}
    g_scores = {q: sims[i, top[i]] for i, q in enumerate(queries)}
    print(
        f"validation: {len(queries)} queries ({len(full)} full-resolution), database {len(db) - 1} train photos; "
        f"machine {platform.processor() or platform.machine()}"
    )
    base = {"all": mean_average_precision_at_k(g_keys, solution), "fullres": mean_average_precision_at_k(g_keys, full)}
    print(f"global: mAP@100 {base['all']:.4f} (full-res {base['fullres']:.4f})")

    results = []
    for ratio, model, thr in itertools.product(
        map(float, args.ratios.split(",")), args.models.split(","), map(float, args.thresholds.split(","))
    ):
        cfg = dataclasses.replace(RerankConfig(), ratio=ratio, model=model, threshold=thr)
        ver = Verifier(local, cfg)
        t0 = time.perf_counter()
        if args.load:  # inlier counts of an earlier --dump run with the same split
            with np.load(args.load) as z:
                inl = dict(zip(queries, z["inliers"]))
        else:
            feats = {q: f for q, f in local.get(queries).items()}
            inl = {
                q: ver.inliers(feats[q], g_keys[q]) if q in feats else np.zeros(args.top_k, np.int32) for q in queries
            }
        dt = time.perf_counter() - t0
        if args.dump and not args.load:
            rel = np.array([[label[k] == label[q] for k in g_keys[q]] for q in queries])
            np.savez(
                f"{args.dump}-r{ratio}-{model}-t{thr:g}.npz",
                inliers=np.stack([inl[q] for q in queries]),
                relevant=rel,
                scores=np.stack([g_scores[q] for q in queries]),
            )
        for min_inl, weight, sat in itertools.product(
            map(int, args.min_inliers.split(",")), (0.1, 0.3, 1.0, 3.0), (20, 60, 150)
        ):
            c = dataclasses.replace(cfg, min_inliers=min_inl, weight=weight, saturation=sat)
            ranked = {}
            for q in queries:
                s = combine(g_scores[q], inl[q], c)
                ranked[q] = [g_keys[q][j] for j in np.argsort(-s, kind="stable")]
            results.append(
                {
                    "ratio": ratio,
                    "model": model,
                    "threshold": thr,
                    "min_inliers": min_inl,
                    "weight": weight,
                    "saturation": sat,
                    "map": mean_average_precision_at_k(ranked, solution),
                    "map_fullres": mean_average_precision_at_k(ranked, full),
                }
            )
        print(f"ratio {ratio} {model} thr {thr}: {len(queries) * args.top_k / dt:.0f} pairs/s")
    results.sort(key=lambda r: -r["map"])
    for r in results[: args.show]:
        print(json.dumps(r))
    print("best:", json.dumps(results[0]), "global:", json.dumps(base))


if __name__ == "__main__":
    main()
