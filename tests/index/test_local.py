"""The on-disk local-feature store: exact round trip, memory mapping, replace/remove, atomic segments."""

from __future__ import annotations

import numpy as np
import pytest

from landmark.features.local import LocalFeatures
from landmark.index.local import LocalStore

SIG = {"kind": "rootsift", "image_size": 1024, "max_keypoints": 1000, "opencv": "4"}


def feats(n, seed, d=128):
    rng = np.random.default_rng(seed)
    kp = np.column_stack(
        [rng.uniform(0, 1000, n), rng.uniform(0, 700, n), rng.uniform(1, 40, n), rng.uniform(0, 360, n)]
    ).astype(np.float16)
    return LocalFeatures(kp, rng.integers(0, 256, (n, d)).astype(np.uint8), 0.5, 1000, 700)


def test_round_trip_is_exact_and_memory_mapped(tmp_path):
    st = LocalStore.create(tmp_path / "local", SIG)
    data = {f"k{i}": feats(n, i) for i, n in enumerate([0, 5, 300, 17])}
    st.add(list(data)[:2], list(data.values())[:2])
    st.add(list(data)[2:], list(data.values())[2:])
    again = LocalStore.open(tmp_path / "local")
    got = again.get(list(data))
    for k, f in data.items():
        assert np.array_equal(got[k].keypoints, f.keypoints) and got[k].keypoints.dtype == np.float16
        assert np.array_equal(got[k].descriptors, f.descriptors) and got[k].descriptors.dtype == np.uint8
        assert (got[k].scale, got[k].width, got[k].height) == (0.5, 1000, 700)
    assert isinstance(got["k2"].descriptors.base, np.memmap) or isinstance(got["k2"].descriptors, np.memmap)
    assert len(again) == 4 and again.info()["keypoints"] == 322


def test_replace_remove_and_compact(tmp_path):
    st = LocalStore.create(tmp_path / "local", SIG)
    st.add(["a", "b"], [feats(10, 1), feats(20, 2)])
    new_b = feats(7, 3)
    st.add(["b"], [new_b])
    assert np.array_equal(st["b"].descriptors, new_b.descriptors)
    assert st.remove(["a", "zzz"]) == 1
    assert "a" not in st and st.keys() == ["b"]
    st.compact()
    assert len(list((tmp_path / "local").glob("seg-*.kp.npy"))) == 1
    assert np.array_equal(LocalStore.open(tmp_path / "local")["b"].keypoints, new_b.keypoints)


def test_other_signature_starts_over_and_failed_write_leaves_old_state(tmp_path, monkeypatch):
    st = LocalStore.create(tmp_path / "local", SIG)
    st.add(["a"], [feats(10, 1)])
    import landmark.index.local as mod

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mod.np, "save", boom)
    with pytest.raises(OSError):
        st.add(["b"], [feats(5, 2)])
    monkeypatch.undo()
    assert st.keys() == ["a"] and not list((tmp_path / "local").glob(".*.tmp"))
    assert len(LocalStore.create(tmp_path / "local", SIG | {"max_keypoints": 50})) == 0


def test_kept_pair_inliers_hold_until_a_photo_changes(tmp_path):
    st = LocalStore.create(tmp_path / "local", SIG)
    st.add(["a", "b", "c"], [feats(10, 1), feats(20, 2), feats(5, 3)])
    st.keep_pair_inliers({("a", "b"): 40, ("a", "c"): 3, ("b", "a"): 38}, "t1")
    again = LocalStore.open(tmp_path / "local")
    assert again.pair_inliers([("a", "b"), ("a", "c"), ("b", "a"), ("c", "a")], "t1") == {
        ("a", "b"): 40,
        ("a", "c"): 3,
        ("b", "a"): 38,
    }
    assert again.pair_inliers([("a", "b")], "other settings") == {}
    again.add(["b"], [feats(20, 9)])  # b is another photo now: its pairs are verified again
    assert again.pair_inliers([("a", "b"), ("b", "a"), ("a", "c")], "t1") == {("a", "c"): 3}
    again.remove(["c"])
    again.add(["c"], [feats(5, 3)])
    assert again.pair_inliers([("a", "c")], "t1") == {}
    LocalStore.create(tmp_path / "local", {**SIG, "max_keypoints": 10})  # another extractor: nothing kept
    assert LocalStore.open(tmp_path / "local").pair_inliers([("a", "b")], "t1") == {}
