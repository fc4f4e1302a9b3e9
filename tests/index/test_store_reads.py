"""Store reads the service needs: landmark counts, paged listings, and pinned snapshots beside a writer."""

from __future__ import annotations

import pytest

from landmark.config import load_config
from landmark.index import Store
from store_helpers import SIG, unit


@pytest.fixture
def store(tmp_path):
    st = Store.create(tmp_path / "s", load_config(), SIG)
    st.add([f"k{i}" for i in range(9)], unit(9), landmark_ids=[5, 5, 5, 7, None, 7, 5, None, 9], split="train")
    return st


def test_landmark_counts_most_photos_first_with_first_key(store):
    assert store.landmark_counts() == [(5, 4, "k0"), (None, 2, "k4"), (7, 2, "k3"), (9, 1, "k8")]


def test_list_images_pages_in_insertion_order(store):
    assert [r.key for r in store.list_images(5)] == ["k0", "k1", "k2", "k6"]
    assert [r.key for r in store.list_images(5, offset=1, limit=2)] == ["k1", "k2"]
    assert [r.key for r in store.list_images(unlabelled=True)] == ["k4", "k7"]
    assert [r.key for r in store.list_images(limit=3, offset=7)] == ["k7", "k8"]
    assert store.list_images(42) == []
    assert all(r.landmark_id == 7 for r in store.list_images(7))


def test_pinned_store_keeps_its_generation_while_the_writer_commits(store, tmp_path):
    v = unit(9)
    pinned = Store.open(tmp_path / "s").pin()
    gen = pinned.generation
    store.remove(["k0", "k1"])
    store.add(["new"], unit(1, seed=3), landmark_ids=[5])
    # the pinned reader still sees the old generation whole: index and metadata agree
    assert pinned.generation == gen and len(pinned) == 9
    assert pinned.refresh() is False
    res = pinned.search(v[:1], 3)
    assert res.keys[0][0] == "k0"
    assert "new" not in pinned.keys() and pinned.landmark_counts()[0] == (5, 4, "k0")
    # an unpinned reader opened now sees the new generation
    fresh = Store.open(tmp_path / "s")
    assert fresh.generation == gen + 2 and len(fresh) == 8 and "new" in fresh.keys()
    assert fresh.search(v[:1], 3).keys[0][0] != "k0"


def test_unpinned_reader_sees_deleted_rows_vanish_from_metadata(store, tmp_path):
    """Why the service pins: without it SQLite moves on while the loaded index does not."""
    reader = Store.open(tmp_path / "s")
    store.remove(["k0"])
    assert "k0" not in reader.keys() and len(reader) == 9  # metadata moved, the index did not
