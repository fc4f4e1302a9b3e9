"""DBA and alpha-QE through the store's index (`landmark index expand`): the same vectors and rankings
as the exact, in-memory ones on a flat store, resumable, and kept consistent through adds and removes."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from landmark.config import ExpansionConfig, load_config
from landmark.features.whitening import l2n
from landmark.index import Store
from landmark.index.augmented import AugmentedVectors
from landmark.pipeline.building import Building
from landmark.pipeline.searching import Searching
from landmark.recognition.config import RecognitionConfig
from landmark.retrieval import ExpandedSearch
from landmark.retrieval.augment import IndexedExpansion, augment_status, augment_store, dba_settings
from landmark.retrieval.expansion import EXPANSION_META, dba, label_verifier

from ..store_helpers import clustered, four_landmarks

VERIFIERS = ["none", "vote", "threshold", "vote+threshold"]


@pytest.fixture
def data(tmp_path):
    return four_landmarks(tmp_path / "s")


def augmented(store):
    rows, _ = store.rows()
    return AugmentedVectors(store).vectors(rows)


@pytest.mark.parametrize("verify", VERIFIERS)
def test_index_dba_equals_exact_dba_when_the_shortlist_covers_the_store(data, verify):
    ec = ExpansionConfig(verify=verify, threshold=0.5)
    report = augment_store(data.store, ec, vote_k=5, chunk=7)  # 12 commits
    assert report.augmented == 84 and report.remaining == 0 and report.indexed and report.status.current
    assert report.voted == (60 if "vote" in verify else 0)  # the unlabelled photos, voted once
    exact = ExpandedSearch(data.store, ec, None, vote_k=5)  # all pairs, in memory
    assert np.allclose(augmented(data.store), exact.vectors, atol=1e-5)
    assert not np.allclose(exact.vectors, data.store.vectors(exact.keys), atol=1e-2)  # DBA moved them
    # and the same as expansion.dba over the array with the same labels
    vectors = data.store.vectors(exact.keys)
    want = dba(vectors, label_verifier(ec, exact.labels, exact.labels), shortlist=ec.shortlist)
    assert np.allclose(augmented(data.store), want, atol=1e-5)


def same_place_inliers(keys, lists):
    """Local-feature inliers as a verifier would count them: 20 between photos of one place, else 3."""

    def place(key):
        return int(key[1:]) // (6 if key[0] == "t" else 15)

    out = np.full((len(keys), max(map(len, lists), default=0)), -1, np.int32)
    for i, (a, row) in enumerate(zip(keys, lists)):
        out[i, : len(row)] = [0 if b == a else 20 if place(a) == place(b) else 3 for b in row]
    return out


def test_dba_verified_by_local_features_equals_the_exact_one(data):
    ec = ExpansionConfig(verify="inliers", inlier_k=10)
    augment_store(data.store, ec, vote_k=5, chunk=9, pair_inliers=same_place_inliers, min_inliers=8)
    exact = ExpandedSearch(data.store, ec, None, vote_k=5, pair_inliers=same_place_inliers, min_inliers=8)
    assert np.allclose(augmented(data.store), exact.vectors, atol=1e-5)
    assert not np.allclose(exact.vectors, data.store.vectors(exact.keys), atol=1e-2)
    # other inlier bars make other vectors: the set is stale for them
    assert augment_status(data.store, ec, 5, min_inliers=8).current
    assert augment_status(data.store, ec, 5, min_inliers=25).state == "stale"
    # no local features: nothing is verified, every photo keeps its vector
    augment_store(data.store, ec, vote_k=5, min_inliers=25)
    assert np.allclose(augmented(data.store), data.store.vectors(exact.keys), atol=1e-6)


@pytest.mark.parametrize("verify", VERIFIERS)
@pytest.mark.parametrize("dba_on,qe_on", [(True, True), (True, False), (False, True)])
def test_qe_through_the_index_equals_exact_qe_on_a_flat_store(data, verify, dba_on, qe_on):
    ec = ExpansionConfig(dba=dba_on, qe=qe_on, verify=verify, threshold=0.5, qe_weights="alpha" if qe_on else "rank")
    if dba_on:
        augment_store(data.store, ec, vote_k=5, chunk=50)
    indexed = IndexedExpansion(data.store, ec, None, vote_k=5)
    assert indexed.dba == dba_on
    got = indexed.rank(data.queries, 20)
    want = ExpandedSearch(data.store, ec, None, vote_k=5).rank(data.queries, 20)
    assert [r.keys for r in got] == [r.keys for r in want]
    assert np.allclose([r.scores for r in got], [r.scores for r in want], atol=1e-5)
    if qe_on:
        assert [r.keys for r in got] != [r.keys for r in indexed.rank(data.queries, 20, qe=False)]


def test_a_photo_with_no_verified_neighbour_keeps_its_own_vector(data):
    lone = l2n(data.centres[:1] + 0.3 * data.rng.standard_normal((1, 8))).astype(np.float32)
    data.store.add(["lone"], lone, landmark_ids=[99], split="train")  # its landmark is no other photo's
    ec = ExpansionConfig(verify="vote")
    augment_store(data.store, ec, vote_k=5)
    aug = AugmentedVectors(data.store)
    row = max(data.store.row_meta(range(1, 200)))
    assert np.allclose(aug.vectors(np.array([row])), lone, atol=1e-6)
    # without verification its 9 nearest join its sum, as the classic DBA has it
    augment_store(data.store, dataclasses.replace(ec, verify="none"), vote_k=5)
    assert not np.allclose(aug.vectors(np.array([row])), lone, atol=1e-2)


def test_a_killed_job_resumes_where_it_stopped(data, monkeypatch):
    ec = ExpansionConfig()
    parts = []
    real = AugmentedVectors.add_part

    def dies_after_three(self, rows, keys, vectors):
        if len(parts) == 3:
            raise KeyboardInterrupt  # killed between two commits
        parts.append(len(rows))
        return real(self, rows, keys, vectors)

    monkeypatch.setattr(AugmentedVectors, "add_part", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        augment_store(data.store, ec, vote_k=5, chunk=10)
    status = augment_status(data.store, ec, 5)
    assert status.state == "partial" and "augmented 0 of 84 photos (30 awaiting the index)" in status.line
    assert not IndexedExpansion(data.store, ec, None, vote_k=5).dba  # not searched until complete
    monkeypatch.setattr(AugmentedVectors, "add_part", real)
    report = augment_store(data.store, ec, vote_k=5, chunk=10)
    assert report.augmented == 54 and report.status.current  # only what the killed run had not committed
    assert np.allclose(augmented(data.store), ExpandedSearch(data.store, ec, None, vote_k=5).vectors, atol=1e-5)


def test_a_limited_run_leaves_the_rest_for_the_next(data):
    ec = ExpansionConfig()
    first = augment_store(data.store, ec, vote_k=5, limit=40)
    assert (first.augmented, first.remaining, first.indexed) == (40, 44, False) and first.status.state == "partial"
    second = augment_store(data.store, ec, vote_k=5)
    assert (second.augmented, second.remaining, second.indexed) == (44, 0, True) and second.status.current
    assert np.allclose(augmented(data.store), ExpandedSearch(data.store, ec, None, vote_k=5).vectors, atol=1e-5)


def test_removed_photos_leave_the_set_in_the_stores_commit(data):
    ec = ExpansionConfig()
    augment_store(data.store, ec, vote_k=5)
    before = IndexedExpansion(data.store, ec, None, vote_k=5).rank(data.queries[:1], 3)[0].keys
    data.store.remove(before[:1])
    status = augment_status(data.store, ec, 5)
    assert status.current and status.line.startswith("augmented 83 of 83 photos")
    assert "1 removed photos left in its index" in status.line
    after = IndexedExpansion(data.store, ec, None, vote_k=5)
    assert after.dba and before[0] not in after.rank(data.queries[:1], 83)[0].keys
    assert len(after.rank(data.queries[:1], 100)[0].keys) == 83
    assert augment_store(data.store, ec, vote_k=5).indexed  # drops it from the index
    assert AugmentedVectors(data.store).index().ntotal == 83


def test_photos_added_later_are_augmented_by_the_next_run_alone(data):
    ec = ExpansionConfig(verify="threshold")
    augment_store(data.store, ec, vote_k=5)
    old = augmented(data.store)
    new = clustered(2, data.centres[:1], 0.3, data.rng)
    data.store.add(["n0", "n1"], new, split="index")
    status = augment_status(data.store, ec, 5)
    assert status.state == "partial" and "augmented 84 of 86 photos" in status.line
    assert not IndexedExpansion(data.store, ec, None, vote_k=5).dba  # the plain index: n0 and n1 are found
    report = augment_store(data.store, ec, vote_k=5)
    assert report.augmented == 2 and report.status.current
    got = augmented(data.store)
    assert np.allclose(got[:84], old, atol=1e-6)  # the photos augmented before keep their vectors
    exact = ExpandedSearch(data.store, ec, None, vote_k=5).vectors
    assert np.allclose(got[84:], exact[84:], atol=1e-5)  # the new ones: from all their neighbours


def test_a_row_number_used_again_is_not_taken_for_augmented(data):
    ec = ExpansionConfig(verify="none")
    augment_store(data.store, ec, vote_k=5)
    data.store.remove(["i59"])  # the last row: the next photo gets its number
    data.store.add(["other"], l2n(-data.store.vectors(["i0"])), split="index")
    assert len(AugmentedVectors(data.store).todo()) == 1
    assert not augment_status(data.store, ec, 5).current
    augment_store(data.store, ec, vote_k=5)
    rows, _ = data.store.rows()
    assert np.allclose(augmented(data.store)[-1], ExpandedSearch(data.store, ec, None, vote_k=5).vectors[-1], atol=1e-5)
    assert rows[-1] == 84


def test_other_settings_make_the_set_stale_and_a_run_remakes_it(data):
    ec = ExpansionConfig(threshold=0.5)
    augment_store(data.store, ec, vote_k=5)
    refit = dataclasses.replace(ec, threshold=0.62)  # e.g. `landmark calibrate` refitted it
    status = augment_status(data.store, refit, 5)
    assert status.state == "stale" and "threshold 0.5 -> 0.62" in status.line
    assert IndexedExpansion(data.store, refit, None, vote_k=5).dba is False
    report = augment_store(data.store, refit, vote_k=5)
    assert report.augmented == 84 and report.voted == 0  # the votes were kept (same vote_k)
    assert AugmentedVectors(data.store).settings == dba_settings(refit, 5)


def test_splits_search_only_their_photos(data):
    ec = ExpansionConfig()
    augment_store(data.store, ec, vote_k=5)
    ranked = IndexedExpansion(data.store, ec, ["index"], vote_k=5).rank(data.queries, 100)
    assert all(k.startswith("i") for r in ranked for k in r.keys) and len(ranked[0].keys) == 60


def compressed_store(tmp_path, n=1200, dim=32):
    cfg = load_config(
        overrides=[
            "index.kind=ivfpq",
            "index.train_min=1000",
            "index.nlist=8",
            "index.pq_m=8",
            "index.nprobe=8",
            "index.rerank=400",
        ]
    )
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((n // 20, dim))
    x = clustered(20, centres, 0.5, rng)
    st = Store.create(tmp_path / "c", cfg, {"model": {"backbone": "test"}, "dim": dim})
    st.add([f"k{i}" for i in range(n)], x, landmark_ids=np.repeat(np.arange(n // 20), 20).tolist())
    assert st.compressed
    return st, x


def test_on_a_compressed_store_the_set_is_compressed_and_close_to_exact(tmp_path):
    st, x = compressed_store(tmp_path)
    ec = ExpansionConfig(verify="vote+threshold", shortlist=100)
    report = augment_store(st, ec, vote_k=5, chunk=300)
    assert report.status.current and "compressed index" in report.status.line
    aug = AugmentedVectors(st)
    files = sorted(p.name for p in aug.root.iterdir())
    assert files == ["index-000001.faiss", "rows-000001.npy", "vectors-000001.faiss"]  # parts merged, removed
    assert (aug.root / "vectors-000001.faiss").stat().st_size < 1200 * 32 * 2 + 200  # float16 on disk
    labels = np.repeat(np.arange(60), 20)
    want = dba(x, label_verifier(ec, labels, labels), shortlist=100)
    got = aug.vectors(st.rows()[0])
    assert np.abs(got - want).max() < 5e-3  # float16 copies of the same sums
    # a later add extends the compressed index at add time (no rebuild), a removal is skipped by search
    ctx = SimpleNamespace(
        store=st, config=st.config, recognition_config=RecognitionConfig(), extractor=None, has_local_features=False
    )
    building = Building(ctx)
    st.config = dataclasses.replace(st.config, expansion=ec)
    ctx.config = st.config
    building.import_vectors(x[:3], ["n0", "n1", "n2"], landmark_ids=[0, 0, 0])
    assert augment_status(st, ec, 5).current and aug.generation == 2
    found = IndexedExpansion(st, ec, None, vote_k=5).rank(x[:1], 5)[0].keys
    assert {"k0", "n0"} <= set(found)


def test_search_expands_large_stores_by_default_only_where_calibrated_and_current(tmp_path):
    st, x = compressed_store(tmp_path)
    cfg = st.config
    ctx = SimpleNamespace(
        store=st, config=cfg, recognition_config=RecognitionConfig(), extractor=None, has_local_features=False
    )
    searching = Searching(ctx, None)
    ec = cfg.expansion
    assert ec.dba and ec.qe and not searching.expands_by_default  # compressed, never calibrated
    assert isinstance(searching.expanded_search(), IndexedExpansion) and not searching.expanded_search().dba
    report = {"dba": True, "qe": True, "verify": ec.verify, "threshold": ec.threshold, "decision": "on"}
    st.set_meta_value(EXPANSION_META, report)
    assert not searching.expands_by_default  # validated, but DBA has not run: not QE alone
    Building(ctx).expand()
    assert searching.expands_by_default and searching.expanded_search().dba  # a new augmented generation
    st.set_meta_value(EXPANSION_META, {**report, "threshold": 0.3})  # validated for another threshold
    assert not searching.expands_by_default


def test_small_exact_stores_expand_in_memory_as_before(data):
    ctx = SimpleNamespace(
        store=data.store, config=load_config(), recognition_config=RecognitionConfig(), has_local_features=False
    )
    searching = Searching(ctx, None)
    assert searching.expands_by_default and searching.in_memory
    assert isinstance(searching.expanded_search(), ExpandedSearch)
    ctx.config = dataclasses.replace(ctx.config, expansion=dataclasses.replace(ctx.config.expansion, search_max=50))
    searching = Searching(ctx, None)
    assert not searching.expands_by_default and isinstance(searching.expanded_search(), IndexedExpansion)
