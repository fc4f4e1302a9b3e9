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


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory):
    """One user cache for the session (exported engine graphs, engine choices): each network is
    exported and timed once, not once per test store; the user's own cache is left alone."""
    old = os.environ.get("LANDMARK_CACHE")
    os.environ["LANDMARK_CACHE"] = str(tmp_path_factory.mktemp("landmark-cache"))
    yield
    if old is None:
        os.environ.pop("LANDMARK_CACHE", None)
    else:
        os.environ["LANDMARK_CACHE"] = old


@pytest.fixture(autouse=True)
def small_validation_minimum(request, monkeypatch):
    """The test stores are small (gldv2-mini's 4 landmarks x 10 photos give 8 validation queries), far
    below the number a real store needs before calibration fits a threshold or switches a stage
    (``MIN_VALIDATION_QUERIES``: 30). Tests of the fitting itself stand for such a store with this
    minimum at 5; tests marked ``real_minimums`` keep the product's values."""
    if request.node.get_closest_marker("real_minimums"):
        return
    from landmark.evaluation import calibration
    from landmark.recognition import calibrate

    monkeypatch.setattr(calibration, "MIN_VALIDATION_QUERIES", 5)
    monkeypatch.setattr(calibrate, "MIN_VALIDATION_QUERIES", 5)
