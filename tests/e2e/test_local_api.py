"""Local features through the API and CLI on real photos: build, re-ranked search, evidence PNG, remove, evaluate."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from landmark.api import Landmarks
from landmark.cli import app
from landmark.config import load_config
from landmark.index import StoreError
from landmark.index.local import LOCAL_DIR, LocalStore

pytestmark = pytest.mark.slow


def test_store_has_local_features_and_search_reranks(mini_store, eiffel_query):
    lm = Landmarks.open(mini_store)
    assert lm.local is not None and set(lm.local.keys()) == set(lm.store.keys())
    plain = lm.search([str(eiffel_query)], k=5, rerank=False)[0].matches
    ranked = lm.search([str(eiffel_query)], k=5)[0].matches
    assert all(m.inliers is None for m in plain)
    assert all(m.inliers is not None for m in ranked)
    assert [m.score for m in ranked] == sorted((m.score for m in ranked), reverse=True)
    # a stored photo searched again is verified against its own copy with overwhelming evidence
    key = lm.store.keys("train")[3]
    again = lm.search([lm.store.get([key])[key].path], k=5)[0].matches
    assert again[0].id == key and again[0].inliers >= 50
    assert all(m.inliers < again[0].inliers for m in again[1:])


def test_match_evidence_png(mini_store, eiffel_query):
    lm = Landmarks.open(mini_store)
    best = lm.search([str(eiffel_query)], k=1)[0].matches[0]
    png = lm.match_evidence(str(eiffel_query), best.id)
    assert png is not None and Image.open(io.BytesIO(png)).format == "PNG"
    keys = lm.store.keys()
    assert lm.match_evidence(keys[0], keys[1])[:4] == b"\x89PNG"  # stored key vs stored key
    assert lm.match_evidence(Image.open(eiffel_query).convert("RGB"), best.id)[:4] == b"\x89PNG"
    with pytest.raises(KeyError):
        lm.match_evidence(str(eiffel_query), "no-such-id")


def test_store_without_local_features(mini_gldv2, fast_overrides, tmp_path):
    cfg = load_config(overrides=[*fast_overrides, "local.enabled=false"])
    lm, _ = Landmarks.build(mini_gldv2, tmp_path / "s", cfg, splits=["index"], progress=False)
    assert lm.local is None and not (tmp_path / "s" / LOCAL_DIR).exists()
    assert lm.match_evidence(lm.store.keys()[0], lm.store.keys()[1]) is None
    photo = lm.store.get(lm.store.keys()[:1])[lm.store.keys()[0]].path
    assert lm.search([photo], k=3)[0].matches[0].inliers is None  # default: no re-ranking
    with pytest.raises(StoreError, match="no local features"):
        lm.search([photo], k=3, rerank=True)


def test_remove_follows_into_local_features(mini_gldv2, fast_overrides, tmp_path):
    lm, _ = Landmarks.build(
        mini_gldv2, tmp_path / "s", load_config(overrides=fast_overrides), splits=["index"], progress=False
    )
    key = lm.store.keys()[0]
    assert key in lm.local
    lm.remove([key])
    assert key not in LocalStore.open(tmp_path / "s" / LOCAL_DIR)
    other = lm.store.keys()[0]
    result = CliRunner().invoke(app, ["index", "remove", other, "--store", str(tmp_path / "s")])
    assert result.exit_code == 0 and other not in LocalStore.open(tmp_path / "s" / LOCAL_DIR)


def test_evaluate_reports_global_and_reranked(mini_gldv2, fast_overrides, tmp_path):
    from landmark.evaluation.run import evaluate_gldv2

    cfg = load_config(
        overrides=[
            *fast_overrides,
            "rerank.inverted_k=10",  # with the local inverted index too
            "category.enabled=false",
        ]
    )  # the last step is the spatial re-rank
    report = evaluate_gldv2(mini_gldv2, tmp_path / "eval", cfg, progress=False, focus=frozenset({47378, 900001}))
    m = report["metrics"]
    assert m["map@100_global"] > 0.3 and m["map@100_reranked"] is not None
    assert m["map@100"] == m["map@100_reranked"]
    assert m["focus_queries"] == 3 and m["focus_landmarks"] == [47378, 900001]  # 3 Eiffel queries, no 900001 here
    assert 0 < m["map@100_focus_global"] <= 1 and m["map@100_focus_reranked"] is not None
    assert report["timings"]["rerank_pairs"] > 0 and report["timings"]["inverted_build_s"] > 0
    assert (
        json.loads((tmp_path / "eval" / "report.json").read_text())["metrics"]["map@100_global"] == m["map@100_global"]
    )


def test_add_local_never_wipes_other_local_features_unless_asked(mini_store, tmp_path):
    import dataclasses
    import shutil

    from landmark.data import ImageRecord

    store = shutil.copytree(mini_store, tmp_path / "store")
    lm = Landmarks.open(store)
    before = len(LocalStore.open(store / LOCAL_DIR).present(lm.store.keys()))
    assert before > 0
    lm.ctx.config = dataclasses.replace(lm.config, local=dataclasses.replace(lm.config.local, max_keypoints=123))
    key = lm.store.keys()[0]
    photo = ImageRecord(key, lm.store.get([key])[key].path)
    with pytest.raises(StoreError, match="other settings"):
        lm.building.add_local([photo], replace=False)  # as the service adds one photo
    assert len(LocalStore.open(store / LOCAL_DIR).present(lm.store.keys())) == before
    lm.building.add_local([photo])  # as `index build` re-extracts everything
    assert LocalStore.open(store / LOCAL_DIR).present(lm.store.keys()) == {key}


def test_a_learned_kind_builds_searches_and_draws_its_verified_matches(mini_gldv2, fast_overrides, tmp_path):
    """local.kind=xfeat + rerank.matcher=lighterglue through the API: float16 features in the store, queries
    extracted like them, re-ranked search with inliers, and the evidence picture of LighterGlue's matches."""
    cfg = load_config(
        overrides=[
            *fast_overrides,
            "local.kind=xfeat",
            "local.image_size=384",
            "local.max_keypoints=256",
            "local.device=cpu",
            "rerank.matcher=lighterglue",
            "rerank.device=cpu",
            "rerank.top_k=5",
        ]
    )
    lm, _ = Landmarks.build(mini_gldv2, tmp_path / "store", cfg, progress=False)
    assert lm.local.signature["kind"] == "xfeat" and lm.local.signature["model"] == "xfeat"
    key = lm.store.keys("train")[3]
    stored = lm.local[key]
    assert stored.descriptors.dtype.name == "float16" and stored.descriptors.shape[1] == 64
    again = lm.search([lm.store.get([key])[key].path], k=5)[0].matches
    assert again[0].id == key and again[0].inliers >= 50
    assert lm.ctx.verifier.glue is not None and lm.ctx.verifier.glue.matcher == "lighterglue"
    other = next(m.id for m in again[1:])
    png = lm.match_evidence(key, other)
    assert png[:4] == b"\x89PNG"
    m, v = lm.ctx.verifier.evidence(stored, key)  # the picture's matches: LighterGlue's, then MAGSAC++
    assert v.inliers >= 50 and len(m) >= v.inliers
