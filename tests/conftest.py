"""Shared fixtures: the real photos in ../shared/datasets (skipped where absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("LANDMARK_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def gldv2_root() -> Path:
    root = DATASETS / "gldv2-mini"
    if not (root / "train.csv").is_file():
        pytest.skip(f"gldv2-mini not found at {root}")
    return root


@pytest.fixture(scope="session")
def revisited_root() -> Path:
    root = DATASETS / "revisited-oxford-paris"
    if not root.is_dir():
        pytest.skip(f"revisited-oxford-paris not found at {root}")
    return root
