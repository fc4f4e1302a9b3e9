"""``landmark index import``: descriptors computed elsewhere enter a store through its real write path."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from landmark.api import Landmarks
from landmark.cli import app
from landmark.config import load_config
from landmark.index import Store, StoreError

pytestmark = pytest.mark.slow  # makes stores with the network

CONFIG = ["model.backbone=tf_efficientnet_lite0", "local.enabled=false", "whitening.kind=none"]
runner = CliRunner()


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    root = tmp_path_factory.mktemp("import") / "store"
    Landmarks.create(root, load_config(overrides=CONFIG)).store.close()
    return root


def test_imported_vectors_are_searched_and_a_rerun_skips_them(empty, tmp_path):
    lm = Landmarks.open(empty)
    x = unit_rows(250, lm.store.dim)
    ids = [f"v{i}" for i in range(250)]
    report = lm.import_vectors(x[:100], ids[:100], landmark_ids=[i % 5 for i in range(100)], batch_size=40)
    assert report.added == {"index": 100} and lm.store.generation == 3  # 40 + 40 + 20: one commit each
    report = lm.import_vectors(x, ids, landmark_ids=[i % 5 for i in range(250)], batch_size=100)  # resumed
    assert report.added == {"index": 150} and report.skipped == {"index": 100}
    found = lm.store.search(x[[7, 180]], 1)
    assert [row[0] for row in found.keys] == ["v7", "v180"]
    assert lm.store.get(["v7"])["v7"].landmark_id == 2


def test_vectors_that_cannot_be_the_stores_are_refused(empty):
    lm = Landmarks.open(empty)
    with pytest.raises(StoreError, match="holds 1280-d vectors"):
        lm.import_vectors(unit_rows(3, 64), ["a", "b", "c"])
    with pytest.raises(StoreError, match="norm"):
        lm.import_vectors(2 * unit_rows(3, lm.store.dim), ["a", "b", "c"])
    with pytest.raises(StoreError, match="repeat"):
        lm.import_vectors(unit_rows(2, lm.store.dim), ["a", "a"])
    assert lm.store.get(["a", "b", "c"]) == {}


def test_cli_import_makes_the_store_when_absent(tmp_path):
    x = unit_rows(30, 1280, seed=1)
    np.save(tmp_path / "v.npy", x)
    with open(tmp_path / "ids.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "landmark_id"])
        w.writerows([f"p{i}", i % 3] for i in range(30))
    store = tmp_path / "store"
    args = [
        "index",
        "import",
        tmp_path / "v.npy",
        tmp_path / "ids.csv",
        "--store",
        store,
        "--no-progress",
        *[a for s in CONFIG for a in ("--set", s)],
    ]
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "imported 30 vectors, 0 already present" in result.output
    with Store.open(store) as st:
        assert len(st) == 30 and st.search(x[[4]], 1).keys[0][0] == "p4"
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert "imported 0 vectors, 30 already present" in result.output
    (tmp_path / "bad.csv").write_text("name\nx\n")
    result = runner.invoke(app, [str(a) for a in args[:3]] + [str(tmp_path / "bad.csv"), "--store", str(store)])
    assert result.exit_code == 2 and "'id' column" in result.output


def test_a_large_first_import_into_a_compressed_store_is_one_bulk_load(tmp_path):
    cfg = load_config(
        overrides=[
            *CONFIG,
            "index.kind=ivfpq",
            "index.train_min=1000",
            "index.nlist=8",
            "index.nprobe=8",
            "index.rerank=100",
        ]
    )
    lm = Landmarks.create(tmp_path / "s", cfg)
    x = unit_rows(1200, lm.store.dim, seed=3)
    ids = [f"b{i}" for i in range(1200)]
    report = lm.import_vectors(x, ids, landmark_ids=[i % 4 for i in range(1200)], batch_size=500)
    assert report.added == {"index": 1200} and lm.store.generation == 1  # three shards, one commit
    assert lm.store.info()["index_kind"] == "ivfpq"
    assert lm.store.search(x[[9, 1100]], 1).keys == [["b9"], ["b1100"]]
    assert lm.store.get(["b9"])["b9"].landmark_id == 1
    report = lm.import_vectors(x, ids, batch_size=500)  # a rerun: the store is no longer empty, all skipped
    assert report.added == {"index": 0} and report.skipped == {"index": 1200}
