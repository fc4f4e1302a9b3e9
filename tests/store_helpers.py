"""Shared by the store tests: a store signature for 8-d test vectors, and random unit vectors."""

from __future__ import annotations

import numpy as np

SIG = {"model": {"backbone": "test"}, "dim": 8, "extract": {"image_size": 64}}


def unit(n, d=8, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
