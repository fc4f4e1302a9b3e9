import multiprocessing as mp
import os

import numpy as np
import pytest

from landmark.config import load_config
from landmark.index import SignatureMismatch, Store, StoreError
from landmark.index.store import check_signature
from store_helpers import SIG, unit


@pytest.fixture
def store(tmp_path):
    return Store.create(tmp_path / "s", load_config(), SIG)


def test_add_search_round_trip(store):
    v = unit(20)
    keys = [f"img{i}" for i in range(20)]
    labels = [i % 3 if i < 10 else None for i in range(20)]
    store.add(
        keys, v, paths=[f"/p/{k}.jpg" for k in keys], landmark_ids=labels, split="train", sizes={"img0": (640, 480)}
    )
    res = store.search(v[:4], 3)
    assert [r[0] for r in res.keys] == keys[:4]  # each vector finds itself first
    assert np.allclose(res.scores[:, 0], 1.0, atol=1e-5)
    assert np.all(res.scores[:, :-1] >= res.scores[:, 1:])  # sorted
    assert res.landmark_ids[0, 0] == 0
    assert store.get(["img0"])["img0"].width == 640
    assert np.allclose(store.vectors(["img3", "img7"]), v[[3, 7]])


def test_labelled_only_and_split_filters(store):
    v = unit(10)
    store.add([f"a{i}" for i in range(5)], v[:5], landmark_ids=[1, 1, 2, 2, 3], split="train")
    store.add([f"b{i}" for i in range(5)], v[5:], split="index")
    res = store.search(v[5:], 5, labelled_only=True)
    assert all(k.startswith("a") for row in res.keys for k in row if k)
    assert (res.landmark_ids >= 0).all()
    res = store.search(v[:5], 5, splits=["index"])
    assert all(k.startswith("b") for row in res.keys for k in row if k)
    # fewer matches than k: padded with None / -inf
    res = store.search(v[:1], 8, splits=["index"])
    assert res.keys[0][5:] == [None, None, None] and np.isneginf(res.scores[0, 5:]).all()


def test_filtered_search_is_exact_after_removals_and_writes(store):
    """Filtered search on an exact store (a flat index of the selected photos) equals brute force."""
    v = unit(60, seed=3)
    labels = [i % 4 if i % 3 else None for i in range(60)]
    store.add([f"p{i}" for i in range(60)], v, landmark_ids=labels, split="db")
    store.remove([f"p{i}" for i in range(0, 60, 7)])  # holes in the rows
    q = unit(5, seed=4)

    def brute(keep):
        kept = [i for i in range(60) if i % 7 and keep(i)]
        order = np.argsort(-(q @ v[kept].T), axis=1, kind="stable")[:, :6]
        return [[f"p{kept[j]}" for j in row] for row in order]

    res = store.search(q, 6, labelled_only=True)
    assert res.keys == brute(lambda i: labels[i] is not None)
    assert np.allclose(
        res.scores,
        np.sort(q @ v[[i for i in range(60) if i % 7 and labels[i] is not None]].T, axis=1)[:, ::-1][:, :6],
        atol=1e-6,
    )
    assert (res.landmark_ids == [[int(k[1:]) % 4 for k in row] for row in res.keys]).all()
    store.add(["late"], v[:1] * -1.0, landmark_ids=[9], split="db")  # a new generation: the subset follows
    assert store.search(-v[:1], 1, labelled_only=True).keys == [["late"]]
    kept = [f"p{i}" for i in range(59, 0, -1) if i % 7]  # vectors() in the asked order, after removals
    assert np.array_equal(store.vectors(kept), v[[int(k[1:]) for k in kept]])
    # a filter that keeps every photo searches the store's own index (no copy of its vectors)
    everything = store.search(q, 6, splits=["db"])
    assert store._views._subset(False, ("db",)) == (None, None)
    assert everything.keys == store.search(q, 6).keys


def test_remove_and_reopen_persist(store, tmp_path):
    v = unit(6)
    store.add([str(i) for i in range(6)], v, landmark_ids=[0] * 6)
    assert store.remove(["1", "3", "missing"]) == 2
    reopened = Store.open(tmp_path / "s")
    assert len(reopened) == 4
    assert set(reopened.keys()) == {"0", "2", "4", "5"}
    res = reopened.search(v[[1]], 4)
    assert "1" not in res.keys[0]
    # the old generations' files are gone; exactly one index file remains
    assert len(list((tmp_path / "s").glob("global-*.faiss"))) == 1


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 10])
def test_a_damaged_meta_database_is_a_store_error(store, tmp_path, content):
    store.add(["a"], unit(1))
    store.close()
    (tmp_path / "s" / "meta.sqlite").write_bytes(content)
    for side in ("-wal", "-shm"):
        (tmp_path / "s" / f"meta.sqlite{side}").unlink(missing_ok=True)
    with pytest.raises(StoreError, match="meta.sqlite is not a readable store database"):
        Store.open(tmp_path / "s")


def test_add_rejects_bad_input(store):
    with pytest.raises(StoreError, match="8 dimensions"):
        store.add(["x"], np.ones((1, 4), np.float32))
    with pytest.raises(StoreError, match="NaN"):
        store.add(["x"], np.full((1, 8), np.nan, np.float32))
    store.add(["x"], unit(1))
    with pytest.raises(StoreError, match="already in the store"):
        store.add(["x"], unit(1))
    store.add(["x"], unit(1, seed=5), replace=True)
    assert len(store) == 1 and np.allclose(store.vectors(["x"]), unit(1, seed=5))


def test_failed_commit_leaves_last_good_state(store, tmp_path, monkeypatch):
    store.add(["keep"], unit(1))
    import landmark.index.writes as mod

    def boom(index, path):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        store.add(["lost"], unit(1, seed=2))
    monkeypatch.undo()
    assert store.keys() == ["keep"] and len(store) == 1
    assert Store.open(tmp_path / "s").keys() == ["keep"]


def _killed_writer(root):
    st = Store.open(root)
    import landmark.index.writes as mod

    real = mod.write_index

    def write_then_die(index, path):
        real(index, path)  # the new generation's file is fully written...
        os._exit(9)  # ...and the process dies before SQLite commits

    mod.write_index = write_then_die
    st.add(["doomed"], unit(1, seed=3))


def test_killed_writer_leaves_a_consistent_store(store, tmp_path):
    store.add(["keep"], unit(1))
    p = mp.get_context("fork").Process(target=_killed_writer, args=(tmp_path / "s",))
    p.start()
    p.join()
    assert p.exitcode == 9
    st = Store.open(tmp_path / "s")
    assert st.keys() == ["keep"] and len(st) == 1
    st.add(["next"], unit(1, seed=4))  # and it is writable again
    assert sorted(Store.open(tmp_path / "s").keys()) == ["keep", "next"]


def test_signature_checks(store, tmp_path):
    check_signature(store, dict(SIG))
    with pytest.raises(SignatureMismatch, match="image_size|extract"):
        check_signature(store, SIG | {"extract": {"image_size": 128}})
    with pytest.raises(StoreError, match="already holds a store"):
        Store.create(tmp_path / "s", load_config(), SIG)
    with pytest.raises(StoreError, match="no store at"):
        Store.open(tmp_path / "nothing")


def test_label_names(store):
    store.set_label_names({1: "Eiffel_Tower"})
    assert store.label_names() == {1: "Eiffel_Tower"}
