import re

import faiss
import numpy as np
import pytest

from landmark.config import IndexConfig, load_config
from landmark.features.whitening import l2n
from landmark.index import Store
from landmark.index.ann import CompressedStoreIndex, auto_pca_dim, default_nlist, make_index, train_index
from landmark.index.faiss_index import AnnError, bytes_per_vector, nprobe_for, remap_ids
from landmark.index.sharded import ShardedIndex
from landmark.index.vectors import DiskVectors, RefineVectors, RerankedIndex, exact_rerank, rerank_rows

D = 32


def clustered(n, seed=0, clusters=40):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, D))
    return l2n(centres[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, D)))


def exact(xb, xq, k):
    return np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :k]


def recall(a, b, k):
    return np.mean([len(set(x[:k]) & set(y[:k])) / k for x, y in zip(a, b)])


def test_default_nlist():
    assert default_nlist(100) == 1
    assert default_nlist(1_000_000) == 4096
    assert default_nlist(10_000) * 39 <= 10_000


def test_exact_rerank_by_hand():
    xb = np.eye(4, dtype=np.float32)
    q = np.array([[0.1, 0.9, 0.5, 0.0]], np.float32)
    scores, ids = exact_rerank(q, np.array([[0, 2, 1, -1]]), lambda r: xb[r], 2)
    assert ids.tolist() == [[1, 2]] and np.allclose(scores, [[0.9, 0.5]])


def test_rerank_rows_matches_the_python_rerank_on_a_memory_map(tmp_path):
    xb, xq = clustered(3000), clustered(40, seed=1)
    vecs = DiskVectors.write(tmp_path / "v.npy", [xb], len(xb), D)
    rng = np.random.default_rng(2)
    cand = np.stack([rng.choice(len(xb), 60, replace=False) for _ in xq])
    cand[::4, 45:] = -1  # IVF padding at the end of short lists
    cand[1, 3] = -1  # and a -1 in the middle, which FAISS alone would stop at
    want_s, want_i = exact_rerank(xq, cand, vecs, 10)
    got_s, got_i = rerank_rows(xq, cand, vecs.array, 10)
    assert (got_i == want_i).all() and np.allclose(got_s, want_s, atol=1e-5)
    few_s, few_i = rerank_rows(xq[:2], cand[:2, :3], vecs.array, 5)  # fewer candidates than k: padded
    assert (few_i[:, 3:] == -1).all() and np.isneginf(few_s[:, 3:]).all()
    with pytest.raises(AnnError, match="outside"):
        rerank_rows(xq[:1], np.array([[len(xb)]]), vecs.array, 1)


def test_ivfpq_with_rerank_beats_codes_alone_and_compresses(tmp_path):
    xb, xq = clustered(4000), clustered(50, seed=1)
    cfg = IndexConfig(kind="ivfpq", nlist=16, pq_m=8, nprobe=16, rerank=300)
    index = train_index(make_index(D, cfg, len(xb)), xb)
    index.add_with_ids(xb, np.arange(len(xb)))
    vecs = DiskVectors.write(tmp_path / "v.npy", [xb[:1000], xb[1000:]], len(xb), D)
    assert isinstance(np.load(tmp_path / "v.npy", mmap_mode="r"), np.memmap)
    truth = exact(xb, xq, 10)
    codes_only = RerankedIndex(index, None, cfg).search(xq, 10)[1]
    reranked = RerankedIndex(index, vecs, cfg).search(xq, 10)[1]
    assert recall(reranked, truth, 10) >= 0.95
    assert recall(reranked, truth, 10) > recall(codes_only, truth, 10)
    assert bytes_per_vector(index) < 4 * D  # 8-byte codes + 8-byte ids + centroids, vs 128 bytes flat


def test_training_needs_enough_vectors():
    cfg = IndexConfig(kind="ivfpq", nlist=64, pq_m=8)
    with pytest.raises(AnnError, match="needs at least"):
        train_index(make_index(D, cfg, 100), clustered(100))
    with pytest.raises(AnnError, match="divide"):
        make_index(30, cfg, 100)


@pytest.mark.parametrize("kind", ["npy", "float16"])
def test_sharded_matches_single_index(tmp_path, kind):
    xb, xq = clustered(3000), clustered(20, seed=2)
    cfg = IndexConfig(kind="ivfpq", nlist=16, pq_m=8, nprobe=16, rerank=100)
    trained = train_index(make_index(D, cfg, len(xb)), xb)
    vecs = (
        DiskVectors.write(tmp_path / "v.npy", [xb], len(xb), D)
        if kind == "npy"
        else RefineVectors.write(tmp_path / "v.faiss", [xb], len(xb), D, kind)
    )
    sharded = ShardedIndex.build(tmp_path / "shards", trained, [xb[:1700], xb[1700:]], 1000, cfg, vecs)
    assert len(sharded.paths) == 3 and sharded.ntotal == 3000
    single = RerankedIndex(trained, vecs, cfg)
    trained.add_with_ids(xb, np.arange(len(xb)))
    s_scores, s_ids = sharded.search(xq, 10)
    assert recall(s_ids, exact(xb, xq, 10), 10) >= 0.95
    assert np.allclose(s_scores, single.search(xq, 10)[0], atol=1e-5)


def test_store_compresses_past_train_min_and_keeps_commits(tmp_path):
    kind = "ivfpq"
    cfg = load_config(
        overrides=[
            f"index.kind={kind}",
            "index.train_min=1500",
            "index.nlist=8",
            "index.pq_m=8",
            "index.rerank=100",
            "index.nprobe=8",
        ]
    )
    sig = {"model": {"backbone": "test"}, "dim": D}
    st = Store.create(tmp_path / "s", cfg, sig)
    xb = clustered(2400)
    keys = [f"k{i}" for i in range(len(xb))]
    st.add(keys[:1000], xb[:1000], split="index")
    assert st.info()["index_kind"] == "flat"  # too few vectors to train yet
    st.add(keys[1000:2000], xb[1000:2000], split="index", landmark_ids=[1] * 1000)
    info = st.info()
    assert info["index_kind"] == kind and info["bytes_per_vector"] < 4 * D
    built = info["compressed"]
    assert re.fullmatch(r"(PCAR16|RR32),IVF8,PQ16x4fsr", built["index"]), built
    assert (built["nlist"], built["nprobe"], built["rerank"], built["vectors"]) == (8, 8, 100, "float16")
    files = sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.startswith(("rows-", "vectors-", "global-")))
    assert files == ["global-000002.faiss", "rows-000002.npy", "vectors-000002.faiss"]
    # searches agree with exact ones; filters still work; stored vectors are the float16 ones
    res = st.search(xb[:20], 10)
    truth = exact(xb[:2000], xb[:20], 10)
    assert recall([[int(k[1:]) for k in row] for row in res.keys], truth, 10) >= 0.9
    assert np.allclose(st.vectors(["k5", "k1500"]), xb[[5, 1500]], atol=1e-3)
    lab = st.search(xb[:5], 5, labelled_only=True)
    assert all(int(k[1:]) >= 1000 for row in lab.keys for k in row if k)
    assert st.search(xb[[1000, 1999]], 1, labelled_only=True).keys == [["k1000"], ["k1999"]]
    # adds and removes after compression; the next generation holds exactly the live vectors
    st.add(keys[2000:], xb[2000:], split="index")
    st.remove(["k2001", "k3"])
    hits = st.search(xb[[2000, 2001, 3]], 1).keys
    assert hits[0] == ["k2000"] and hits[1] != ["k2001"] and hits[2] != ["k3"]
    reopened = Store.open(tmp_path / "s")
    assert len(reopened) == 2398
    assert np.allclose(reopened.vectors(["k2399"]), xb[[2399]], atol=1e-3)
    assert reopened.search(xb[[2399]], 1).keys == [["k2399"]]
    assert len(list((tmp_path / "s").glob("vectors-*"))) == 1
    # replacing the newest photo frees its row and the new vector takes it again, in one commit
    newest = np.roll(xb[2399], 1)
    reopened.add(["k2399"], newest[None], split="index", replace=True)
    assert reopened.search(newest[None], 1).keys == [["k2399"]]
    assert np.allclose(reopened.vectors(["k2399"]), newest, atol=1e-3)
    assert len(reopened) == 2398 and len(Store.open(tmp_path / "s")) == 2398  # the old vector went with its row
    assert reopened.search(xb[[1000, 1999]], 1, labelled_only=True).keys == [["k1000"], ["k1999"]]


def test_residual_coding_is_the_default_and_can_be_switched_off():
    def by_residual(**kw):
        index = make_index(D, IndexConfig(kind="ivfpq", nlist=16, pq_m=8, **kw), 4000)
        return faiss.downcast_index(faiss.extract_index_ivf(index)).by_residual  # index stays alive meanwhile

    assert by_residual() and not by_residual(residual=False)


@pytest.mark.parametrize("dtype, atol", [("float16", 2e-3), ("float32", 1e-5)])
def test_refine_vectors_rescore_a_shortlist_like_the_exact_rerank(tmp_path, dtype, atol):
    xb, xq = clustered(3000), clustered(30, seed=1)
    cfg = IndexConfig(kind="ivfpq", nlist=16, pq_m=8, nprobe=16, rerank=200)
    index = train_index(make_index(D, cfg, len(xb)), xb)
    index.add_with_ids(xb, np.arange(len(xb)))
    refine = RefineVectors.write(tmp_path / "v.faiss", [xb[:1000], xb[1000:]], len(xb), D, dtype)
    assert refine.dtype == dtype and len(refine) == len(xb)
    assert np.allclose(refine(np.array([7, 2999, 0])), xb[[7, 2999, 0]], atol=atol)
    _, cand = index.search(xq, 200)
    want_s, want_i = exact_rerank(xq, cand, lambda ids: xb[ids], 10)
    got_s, got_i = refine.refine(index, xq, 10, 200)
    assert np.allclose(got_s, want_s, atol=atol)  # the same scores, rank by rank
    assert recall(got_i, want_i, 10) >= (0.97 if dtype == "float16" else 1.0)
    assert recall(RerankedIndex(index, refine, cfg).search(xq, 10)[1], exact(xb, xq, 10), 10) >= 0.95
    # fewer candidates than k are padded; a selector passes through to the compressed index
    sel = faiss.SearchParametersIVF(nprobe=16, sel=faiss.IDSelectorBatch(np.arange(3, dtype=np.int64)))
    few_s, few_i = refine.refine(index, xq[:2], 5, 5, sel)
    assert set(few_i[:, :3].ravel()) <= {0, 1, 2} and (few_i[:, 3:] == -1).all() and np.isneginf(few_s[:, 3:]).all()
    # vectors removed from the compressed index since the file was written are never proposed
    index.remove_ids(faiss.IDSelectorRange(0, 1000))
    _, cand = index.search(xq, 200)
    want_s, want_i = exact_rerank(xq, cand, lambda ids: xb[ids], 10)
    got_s, got_i = refine.refine(index, xq, 10, 200)
    assert got_i.min() >= 1000 and np.allclose(got_s, want_s, atol=atol)
    with pytest.raises(AnnError, match="ids must be in"):
        refine(np.array([len(xb)]))
    with pytest.raises(AnnError, match="vectors_dtype"):
        RefineVectors.write(tmp_path / "w.faiss", [xb], len(xb), D, "int8")


def test_remap_ids_renames_the_vectors_of_an_inverted_file():
    xb = clustered(2000)
    cfg = IndexConfig(kind="ivfpq", nlist=8, pq_m=8, nprobe=8)
    index = train_index(make_index(D, cfg, len(xb)), xb)
    index.add_with_ids(xb, 10 * np.arange(len(xb)))
    before = index.search(xb[:20], 5)
    remap_ids(index, lambda ids: ids // 10 + 7)
    after = index.search(xb[:20], 5)
    assert (after[1] == before[1] // 10 + 7).all() and np.allclose(after[0], before[0])


def test_a_store_compressed_before_refine_vectors_still_opens(tmp_path):
    """Generations written with float32 ``vectors-<g>.npy`` and codes named by store row are read and searched."""
    cfg = load_config(
        overrides=[
            "index.kind=ivfpq",
            "index.train_min=1000",
            "index.nlist=8",
            "index.pq_m=8",
            "index.rerank=100",
            "index.nprobe=8",
        ]
    )
    root = tmp_path / "s"
    st = Store.create(root, cfg, {"model": {"backbone": "test"}, "dim": D})
    xb = clustered(1500)
    st.add([f"k{i}" for i in range(len(xb))], xb, split="index")
    st.close()
    # rewrite generation 1 in the old layout
    index = faiss.read_index(str(root / "global-000001.faiss"))
    rows = np.load(root / "rows-000001.npy")
    remap_ids(index, lambda pos: rows[pos])
    faiss.write_index(index, str(root / "global-000001.faiss"))
    np.save(root / "vectors-000001.npy", xb.astype(np.float32))
    (root / "vectors-000001.faiss").unlink()
    old = Store.open(root)
    assert isinstance(old._index, CompressedStoreIndex) and isinstance(old._index.vectors, np.ndarray)
    res = old.search(xb[:20], 10)
    assert recall([[int(k[1:]) for k in row] for row in res.keys], exact(xb, xb[:20], 10), 10) >= 0.9
    assert np.allclose(res.scores[:, 0], 1.0, atol=1e-5)  # re-ranked from the exact float32 vectors
    assert np.array_equal(old.vectors(["k3", "k1499"]), xb[[3, 1499]])
    old.remove(["k3"])  # the next generation is in the new layout
    assert sorted(p.name for p in root.glob("vectors-*")) == ["vectors-000002.faiss"]
    assert Store.open(root).search(xb[[3, 4]], 1).keys[1] == ["k4"]


def test_compressed_store_index_translates_rows_while_changes_are_pending(tmp_path):
    """Adds and removes before a write (one store transaction) are searched, filtered and reconstructed
    in store rows; the written generation, read back, answers the same."""
    xb = clustered(1200)
    cfg = IndexConfig(kind="ivfpq", nlist=8, pq_m=8, nprobe=8, rerank=2000, vectors_dtype="float32")
    rows = 10 + 3 * np.arange(1000)  # store rows with gaps
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(D))
    flat.add_with_ids(xb[:1000], rows)
    index = CompressedStoreIndex.from_flat(flat, cfg)
    paths = [tmp_path / n for n in ("g1.faiss", "v1.faiss", "r1.npy")]
    index.write(*paths)
    index = CompressedStoreIndex.read(*paths, cfg)
    live = dict(zip(rows.tolist(), xb[:1000]))
    # remove the newest row and add it again with a new vector (a replace), remove an older one,
    # add new rows, then remove one of those before any write
    newest = int(rows[-1])
    index.remove_ids(np.array([newest, int(rows[5])]))
    del live[newest], live[int(rows[5])]
    added = np.array([newest, 5000, 5001, 5002, 7])  # rows need not come in order
    index.add_with_ids(xb[1000:1005], added)
    live.update(zip(added.tolist(), xb[1000:1005]))
    index.remove_ids(np.array([5001]))
    del live[5001]

    def check(ix):
        keys = np.array(sorted(live))
        vecs = np.stack([live[r] for r in keys])
        assert ix.ntotal == len(keys)
        assert np.allclose(ix.reconstruct_rows(keys[[0, -1, -3]]), vecs[[0, -1, -3]], atol=1e-6)
        q = xb[[0, 1000, 1003, 1001, 1004]]
        scores, got = ix.search(q, 5)
        want = keys[np.argsort(-(q @ vecs.T), axis=1, kind="stable")[:, :5]]
        assert (got == want).all()  # re-ranked over all of them: exact, in store rows
        subset = keys[keys % 2 == 0]  # a filter, as the store makes it
        sel = faiss.SearchParameters(sel=faiss.IDSelectorBatch(ix.ids_of(subset)))
        _, fgot = ix.search(q, 3, params=sel)
        sub = np.stack([live[r] for r in subset])
        assert (fgot == subset[np.argsort(-(q @ sub.T), axis=1, kind="stable")[:, :3]]).all()
        with pytest.raises(AnnError, match="not in the compressed index"):
            ix.reconstruct_rows(np.array([5001]))

    check(index)
    paths = [tmp_path / n for n in ("g2.faiss", "v2.faiss", "r2.npy")]
    index.write(*paths)
    check(index)  # renumbered in memory
    assert (np.load(paths[2]) == np.array(sorted(live))).all()
    check(CompressedStoreIndex.read(*paths, cfg))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_refine_vectors_are_streamed_into_faiss_own_file_format(tmp_path, dtype):
    xb = clustered(700)
    RefineVectors.write(tmp_path / "streamed.faiss", [xb[:300], xb[300:301], xb[301:]], len(xb), D, dtype)
    whole = (
        faiss.IndexFlatIP(D)
        if dtype == "float32"
        else faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    )
    whole.add(xb)
    faiss.write_index(whole, str(tmp_path / "faiss.faiss"))
    assert (tmp_path / "streamed.faiss").read_bytes() == (tmp_path / "faiss.faiss").read_bytes()
    assert len(RefineVectors.write(tmp_path / "empty.faiss", [], 0, D, dtype)) == 0
    with pytest.raises(AnnError, match="expected 700 vectors, got 699"):
        RefineVectors.write(tmp_path / "short.faiss", [xb[:699]], len(xb), D, dtype)
    with pytest.raises(AnnError, match="more than the 10"):
        RefineVectors.write(tmp_path / "long.faiss", [xb[:8], xb[8:16]], 10, D, dtype)
    assert not (tmp_path / "short.faiss").exists() and not (tmp_path / "long.faiss").exists()


def test_nprobe_is_a_share_of_the_cells_unless_set():
    assert nprobe_for(2048, IndexConfig()) == 143 and nprobe_for(4096, IndexConfig()) == 287
    assert nprobe_for(4, IndexConfig()) == 1  # at least one cell
    assert nprobe_for(2048, IndexConfig(nprobe=64)) == 64 and nprobe_for(16, IndexConfig(nprobe=64)) == 64
    index = make_index(D, IndexConfig(kind="ivfpq", nlist=256, pq_m=8), 20_000)
    assert faiss.extract_index_ivf(index).nprobe == 18  # 7 % of 256


def test_the_codes_cover_the_pca_dimensions_that_hold_most_of_the_variance():
    rng = np.random.default_rng(0)
    spectrum = np.r_[np.full(8, 10.0), np.full(8, 1.0), np.full(16, 0.01)]  # 16 of 32 dims hold 99.7 %
    sample = (rng.normal(size=(4000, D)) * np.sqrt(spectrum)) @ np.linalg.qr(rng.normal(size=(D, D)))[0]
    assert auto_pca_dim(sample, 8, 0.85) == 8 and auto_pca_dim(sample, 8, 0.95) == 16
    assert auto_pca_dim(sample, 8, 1.0) == D  # all: no fewer hold everything
    assert auto_pca_dim(rng.normal(size=(4000, D)), 8, 0.85) == D  # a flat (whitened) spectrum
    cfg = IndexConfig(kind="ivfpq", nlist=16, pq_m=4, pca_energy=0.95)

    def rotation(index):  # (kind, output dims) of the index's first transform, read while it lives
        first = faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0))
        return type(first).__name__, first.d_out

    assert rotation(make_index(D, cfg, 4000, sample.astype(np.float32))) == ("PCAMatrix", 16)
    assert rotation(make_index(D, cfg, 4000)) == ("RandomRotationMatrix", D)  # no sample: all dims
    fixed = IndexConfig(kind="ivfpq", nlist=16, pq_m=4, pca_dim=24)
    assert rotation(make_index(D, fixed, 4000, sample)) == ("PCAMatrix", 24)
