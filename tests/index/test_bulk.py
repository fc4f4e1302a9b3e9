"""A compressed store loaded shard by shard: one trained index, one generation, the store's usual reads."""

import numpy as np
import pytest

from landmark.config import load_config
from landmark.features.whitening import l2n
from landmark.index import Store, StoreError
from landmark.index.bulk import Shard, array_shards, bulk_import, bulk_load, npy_shards, sample_rows, sample_shards

D = 32
CFG = ["index.kind=ivfpq", "index.nlist=8", "index.pq_m=8", "index.rerank=100", "index.nprobe=8"]
SIG = {"model": {"backbone": "test"}, "dim": D}


def clustered(n, seed=0, clusters=40):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, D))
    return l2n(centres[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, D))).astype(np.float32)


def test_npy_shards_read_the_file_in_order(tmp_path):
    x = clustered(25)
    np.save(tmp_path / "v.npy", x)
    ids = [f"k{i}" for i in range(25)]
    shards = list(npy_shards(tmp_path / "v.npy", ids, 10, landmark_ids=list(range(25))))
    assert [len(s.ids) for s in shards] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([s.vectors for s in shards]), x)
    assert shards[2].ids == ids[20:] and shards[2].landmark_ids == [20, 21, 22, 23, 24]
    with pytest.raises(StoreError, match="24 ids"):
        next(npy_shards(tmp_path / "v.npy", ids[:24], 10))
    assert len(sample_rows(x, 7)) == 7 and len(sample_rows(x, 100)) == 25


def test_bulk_load_builds_one_generation_searched_like_exact(tmp_path):
    xb = clustered(3000)
    np.save(tmp_path / "v.npy", xb)
    keys = [f"k{i}" for i in range(len(xb))]
    st = Store.create(tmp_path / "s", load_config(overrides=CFG), SIG)
    n = bulk_load(
        st,
        npy_shards(tmp_path / "v.npy", keys, 700, landmark_ids=[i % 3 for i in range(3000)]),
        len(keys),
        sample_rows(xb, 2000),
    )
    assert n == 3000 and len(st) == 3000 and st.generation == 1
    files = sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.startswith(("rows-", "vectors-", "global-")))
    assert files == ["global-000001.faiss", "rows-000001.npy", "vectors-000001.faiss"]
    info = st.info()
    assert info["index_kind"] == "ivfpq" and info["bytes_per_vector"] < 4 * D
    # reopened, it searches like exact search, returns the stored (float16) vectors and the labels
    st = Store.open(tmp_path / "s")
    res = st.search(xb[:50], 10)
    truth = np.argsort(-(xb[:50] @ xb.T), axis=1, kind="stable")[:, :10]
    got = [[int(k[1:]) for k in row] for row in res.keys]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]) >= 0.9
    assert [row[0] for row in res.keys[:5]] == keys[:5]
    np.testing.assert_allclose(st.vectors(["k0", "k2999"]), xb[[0, 2999]], atol=1e-3)
    assert st.get(["k4"])["k4"].landmark_id == 1 and st.keys()[:3] == keys[:3]
    # the store goes on as usual: incremental adds and removes after the bulk load
    extra = clustered(10, seed=5)
    st.add([f"e{i}" for i in range(10)], extra, split="index")
    st.remove(["k1"])
    assert len(Store.open(tmp_path / "s")) == 3009
    assert st.search(extra[:1], 1).keys == [["e0"]]
    with pytest.raises(StoreError, match="empty store"):
        bulk_load(st, array_shards(xb, keys, 1000), 3000, xb[:2000])


def test_a_failed_bulk_load_leaves_the_store_empty(tmp_path):
    xb = clustered(2000)
    keys = [f"k{i}" for i in range(2000)]
    st = Store.create(tmp_path / "s", load_config(overrides=CFG), SIG)
    bad = xb.copy()
    bad[1500] *= 2
    with pytest.raises(StoreError, match=r"row 1500 \(.k1500.\) has norm 2.0000"):
        bulk_load(st, array_shards(bad, keys, 500), 2000, xb)
    with pytest.raises(StoreError, match="an id repeats"):
        bulk_load(st, array_shards(xb, keys[:1000] + keys[:1000], 500), 2000, xb)
    with pytest.raises(StoreError, match="2000 x 32"):
        bulk_load(st, iter([Shard(keys, xb[:, :16])]), 2000, xb)
    assert len(st) == 0 and len(Store.open(tmp_path / "s")) == 0 and not st.keys()
    flat = Store.create(tmp_path / "f", load_config(), SIG)
    with pytest.raises(StoreError, match="index.kind=ivfpq"):
        bulk_load(flat, array_shards(xb, keys, 500), 2000, xb)


def test_bulk_import_maps_rows_and_checks_them(tmp_path):
    xb = clustered(2500)
    keys = [f"k{i}" for i in range(2500)]
    st = Store.create(tmp_path / "s", load_config(overrides=CFG), SIG)
    bad = xb.copy()
    bad[2100] = np.nan
    with pytest.raises(StoreError, match=r"row 2100 \('k2100'\) has norm nan"):
        bulk_import(st, bad, keys, shard_size=1000)
    flip = np.ones(D, np.float32)
    flip[0] = -1
    assert bulk_import(st, xb, keys, shard_size=1000, transform=lambda x: x * flip) == 2500
    np.testing.assert_allclose(st.vectors(["k7"])[0], xb[7] * flip, atol=1e-3)
    assert st.search((xb[7] * flip)[None], 1).keys == [["k7"]]


def test_sample_shards_takes_rows_from_every_shard(tmp_path):
    x = clustered(1000)
    keys = [f"k{i}" for i in range(1000)]
    s = sample_shards(array_shards(x, keys, 128), 1000, 300, seed=4)
    assert s.shape == (300, D)
    picked = {tuple(np.round(r, 5)) for r in s}
    assert picked <= {tuple(np.round(r, 5)) for r in x}
    assert sample_shards(array_shards(x, keys, 128), 1000, 5000).shape == (1000, D)  # all of them, in order
    np.testing.assert_array_equal(sample_shards(array_shards(x, keys, 128), 1000, 5000), x)
