"""Fixtures for the service tests: the e2e mini store (lite0 at 224 px), copied before any write."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_e2e_conftest", Path(__file__).parents[1] / "e2e" / "conftest.py")
_e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_e2e)

# the same session fixtures as tests/e2e (a small real store of 4 landmarks of gldv2-mini)
mini_gldv2 = _e2e.mini_gldv2
mini_store = _e2e.mini_store
eiffel_query = _e2e.eiffel_query
fast_overrides = _e2e.fast_overrides


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_work", ".lock"))
    return dst


@pytest.fixture
def store_copy(mini_store, tmp_path) -> Path:
    """A private copy of the mini store that a test may write to."""
    return copy_store(mini_store, tmp_path / "store")


@pytest.fixture(scope="session")
def stonehenge_query(mini_gldv2) -> Path:
    rows = (mini_gldv2 / "recognition_solution.csv").read_text().splitlines()[1:]
    qid = next(r.split(",")[0] for r in rows if r.split(",")[1] == "90396")
    return mini_gldv2 / "test" / qid[0] / qid[1] / qid[2] / f"{qid}.jpg"
