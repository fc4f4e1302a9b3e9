"""``landmark index expand``: DBA through the index as a store job, and what ``index info`` says of it."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from landmark.cli import app

pytestmark = pytest.mark.slow  # a store built from real photos

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def dba_line(store) -> str:
    return json.loads(run("index", "info", "--store", store).stdout)["dba"]


def test_expand_then_add_and_remove_keep_the_augmented_vectors(mini_store, eiffel_query, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(mini_store, store)
    n = json.loads(run("index", "info", "--store", store).stdout)["images"]
    assert dba_line(store).startswith(f"none: augmented 0 of {n} photos")
    part = run("index", "expand", "--store", store, "--limit", "20", "--no-progress")
    assert part.exit_code == 0 and "augmented 20 photos" in part.stdout
    assert dba_line(store).startswith(f"partial: augmented 0 of {n} photos (20 awaiting the index)")
    done = run("index", "expand", "--store", store, "--no-progress")
    assert done.exit_code == 0 and f"augmented {n - 20} photos" in done.stdout and "indexed" in done.stdout
    assert dba_line(store) == f"augmented {n} of {n} photos (flat index)"
    # a photo added later is augmented at add time; a removed one leaves the set in the same commit
    assert run("index", "add", eiffel_query, "--store", store, "--no-progress").exit_code == 0
    assert dba_line(store) == f"augmented {n + 1} of {n + 1} photos (flat index)"
    assert run("index", "remove", eiffel_query.stem, "--store", store).exit_code == 0
    assert dba_line(store).startswith(f"augmented {n} of {n} photos (flat index); 1 removed photos left")
