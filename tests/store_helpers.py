"""Shared by the store tests: a store signature for 8-d test vectors, random unit vectors, and a small store of
four clustered landmarks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from landmark.config import load_config
from landmark.features.whitening import l2n
from landmark.index import Store

SIG = {"model": {"backbone": "test"}, "dim": 8, "extract": {"image_size": 64}}


def unit(n, d=8, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def clustered(n_per, centres, spread, rng):
    """``n_per`` unit vectors around each of ``centres``."""
    return l2n(np.concatenate([c + spread * rng.standard_normal((n_per, len(c))) for c in centres]).astype(np.float32))


def four_landmarks(root: Path) -> SimpleNamespace:
    """An exact 8-d store at ``root``: labelled ``train`` photos of 4 landmarks (6 each, ids 10-13) and 60
    unlabelled ``index`` photos of the same places; with 20 queries of them (``queries``)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 8))
    st = Store.create(root, load_config(), SIG)
    train = clustered(6, centres, 0.6, rng)
    st.add(
        [f"t{i}" for i in range(len(train))], train, landmark_ids=np.repeat([10, 11, 12, 13], 6).tolist(), split="train"
    )
    index = clustered(15, centres, 0.7, rng)
    st.add([f"i{i}" for i in range(len(index))], index, split="index")
    return SimpleNamespace(
        store=st, train=train, index=index, centres=centres, rng=rng, queries=clustered(5, centres, 0.7, rng)
    )
