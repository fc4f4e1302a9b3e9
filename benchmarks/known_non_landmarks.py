"""The known non-landmark set at scale: each flagged photo's nearest other (``nearest_other``), exact
against IVF (``recognition.filters.similarity_index`` above ``EXACT_MAX`` photos).

    python benchmarks/known_non_landmarks.py [--sizes 20000,100000] [--dim 512]

Synthetic unit vectors in Gaussian clusters of 20 (a store's flagged photos: near-duplicates and
scenes). Prints seconds for the exact (flat) search and the IVF one, and how often IVF finds the
same nearest similarity (to 1e-5) and its largest shortfall.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from landmark.recognition.filters import similarity_index, top_similarities


def nearest(vectors: np.ndarray, exact_max: int) -> np.ndarray:
    sims, rows = top_similarities(vectors, similarity_index(vectors, exact_max=exact_max), 2)
    return np.where(rows == np.arange(len(vectors))[:, None], -np.inf, sims).max(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000")
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'photos':>8s} {'exact s':>8s} {'IVF s':>7s} {'same nearest':>12s} {'max shortfall':>13s}")
    for n in (int(s) for s in args.sizes.split(",")):
        centres = rng.normal(size=(n // 20, args.dim)).astype(np.float32)
        x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, args.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        t0 = time.perf_counter()
        exact = nearest(x, exact_max=n)
        t1 = time.perf_counter()
        approx = nearest(x, exact_max=0)
        t2 = time.perf_counter()
        same = np.mean(np.abs(exact - approx) < 1e-5)
        print(f"{n:8d} {t1 - t0:8.1f} {t2 - t1:7.1f} {same:12.4f} {float(np.max(exact - approx)):13.4f}")


if __name__ == "__main__":
    main()
