"""Ensemble + PCA-whitening stores and the retrieval ablation of `landmark evaluate`, on real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landmark.api import Landmarks
from landmark.config import load_config
from landmark.data.manifests import read_gldv2, read_gldv2_solution
from landmark.evaluation.run import evaluate_gldv2
from landmark.features.whitening import Whitening, WhiteningError, learn_labelled_whitening
from landmark.index import StoreError
from landmark.metrics import mean_average_precision_at_k

pytestmark = pytest.mark.slow


def test_ensemble_whitened_store_round_trip(mini_gldv2, fast_overrides, eiffel_query, tmp_path):
    cfg = load_config(
        overrides=[
            *fast_overrides,
            "ensemble=[{backbone: tf_efficientnet_lite0, pooling: mac}]",
            "whitening.kind=pca",
            "whitening.dim=12",
        ]
    )
    store = tmp_path / "store"
    lm, report = Landmarks.build(mini_gldv2, store, cfg, progress=False)
    assert not report.failures and sum(report.added.values()) == len(lm.store)
    sig = lm.store.signature
    assert sig["dim"] == 12 and len(sig["ensemble"]) == 2 and sig["whitening"]["in_dim"] == 2 * 1280
    w = Whitening.load(store / "whitening.npz")
    assert w.digest == sig["whitening"]["digest"]
    # reopened, the store whitens queries itself; the Eiffel query finds Eiffel photos
    lm2 = Landmarks.open(store, device="cpu")
    rec = lm2.recognize([str(eiffel_query)])[0]
    assert rec.landmark_id == 47378
    assert np.allclose(np.linalg.norm(lm2.store.vectors(lm2.store.keys()[:3]), axis=1), 1.0, atol=1e-5)
    # a whitening file that no longer matches the signature is refused
    Whitening(w.mean, w.projection * 2, w.eigenvalues, w.power, w.shrinkage).save(store / "whitening.npz")
    with pytest.raises(StoreError, match="whitening"):
        Landmarks.open(store, device="cpu")


def test_learned_whitening_store_keeps_its_validation_photos_out(mini_gldv2, fast_overrides, eiffel_query, tmp_path):
    from landmark.data.splits import split_by_photo
    from landmark.features.pipeline import base_extractor
    from landmark.recognition.holdout import model_validation_ids

    cfg = load_config(
        overrides=[
            *fast_overrides,
            "whitening.kind=learned",
            "whitening.learn_on=train",
            "whitening.dim=6",
            "whitening.shrinkage=0.1",
        ]
    )
    store = tmp_path / "store"
    lm, report = Landmarks.build(mini_gldv2, store, cfg, progress=False)
    w = Whitening.load(store / "whitening.npz")
    assert w.kind == "learned" and lm.store.dim == 6 and lm.store.signature["whitening"]["kind"] == "learned"
    train = read_gldv2(mini_gldv2, "train").records
    held = {r.id for r in split_by_photo(train, 0.15, 2, 0).val}  # the split `landmark calibrate` makes
    assert held and set(w.held_out) == held
    # learned on the other labelled photos only
    rest = [r for r in train if r.id not in held]
    res = base_extractor(cfg, device="cpu").extract(rest, progress=False)
    labels = {r.id: r.landmark_id for r in rest}
    again = learn_labelled_whitening(res.vectors, np.array([labels[i] for i in res.ids]), 6, shrinkage=0.1)
    assert np.allclose(again.projection, w.projection, atol=1e-6)
    # every photo is stored, and calibrations validate on exactly the held-out ones
    assert sum(report.added.values()) == len(lm.store) and held <= set(lm.store.keys("train"))
    assert not list((store / "_work").glob("extract-*"))  # the store's extraction used up the whitening's cache
    assert model_validation_ids(lm.store, lm.store.keys("train")) == held
    assert Landmarks.open(store, device="cpu").recognize([str(eiffel_query)])[0].landmark_id == 47378
    # the unlabelled index split cannot teach it
    with pytest.raises(WhiteningError, match="has none in index: learn it on a labelled split"):
        Landmarks.build(
            mini_gldv2,
            tmp_path / "other",
            load_config(overrides=[*fast_overrides, "whitening.kind=learned"]),
            progress=False,
        )
    # nor can 40 photos of 4 landmarks without shrinkage: refused before anything is extracted
    with pytest.raises(WhiteningError, match="singular: set whitening.shrinkage > 0"):
        Landmarks.build(
            mini_gldv2,
            tmp_path / "third",
            load_config(
                overrides=[
                    *fast_overrides,
                    "whitening.kind=learned",
                    "whitening.learn_on=train",
                    "whitening.shrinkage=0",
                ]
            ),
            progress=False,
        )
    assert not (tmp_path / "third").exists()


def test_evaluate_reports_the_ablation(mini_gldv2, mini_store, fast_overrides, tmp_path):
    import shutil

    store = shutil.copytree(mini_store, tmp_path / "store")  # evaluate calibrates it: the shared store stays as built
    plain = fast_overrides + ["expansion.dba=false", "expansion.qe=false"]
    report = evaluate_gldv2(
        mini_gldv2, tmp_path / "eval", load_config(overrides=plain), store_dir=store, progress=False
    )
    rows = report["metrics"]["ablation"]
    assert [r["step"] for r in rows] == [
        "plain kNN",
        "+ multi-scale",
        "+ PCA-whitening",
        "+ DBA",
        "+ alpha-QE",
        "+ category re-rank",
    ]
    category = report["category"]
    assert category["config"]["enabled"] == category["calibration"]["enabled"]  # fitted on validation, then used
    assert (rows[5]["map"] is None) == (not category["config"]["enabled"])
    m = report["metrics"]
    assert (m["map@100_category"] is None) == (not category["config"]["enabled"])
    assert m["map@100"] == pytest.approx(
        m["map@100_category"] if category["config"]["enabled"] else m["map@100_reranked"]
    )
    assert rows[0]["map"] == pytest.approx(report["metrics"]["map@100_global"])  # the same ranking, before re-ranking
    # with DBA + alpha-QE on (the default), the submitted global ranking is the expanded one
    expanded = evaluate_gldv2(
        mini_gldv2, tmp_path / "eval2", load_config(overrides=fast_overrides), store_dir=store, progress=False
    )
    assert expanded["metrics"]["map@100_global"] != pytest.approx(report["metrics"]["map@100_global"])
    assert all(0 <= r["map"] <= 1 for r in rows if r["map"] is not None)
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["metrics"]["ablation"] == rows
    # the category re-rank on (an explicit similarity: not calibrated): the submission is its ranking
    on = evaluate_gldv2(
        mini_gldv2,
        tmp_path / "eval3",
        load_config(overrides=fast_overrides + ["category.min_similarity=0.3"]),
        store_dir=store,
        progress=False,
    )
    m = on["metrics"]
    assert on["category"]["config"]["enabled"] and on["category"]["calibration"] is None
    assert m["map@100_category"] is not None and m["map@100"] == pytest.approx(m["map@100_category"])
    assert on["metrics"]["ablation"][5]["map"] is not None and "0.30" in on["metrics"]["ablation"][5]["note"]
    lines = (tmp_path / "eval3" / "submission_retrieval.csv").read_text().splitlines()[1:]
    submitted = {q: images.split() for q, images in (line.split(",") for line in lines)}
    assert mean_average_precision_at_k(submitted, read_gldv2_solution(mini_gldv2).retrieval, k=100) == pytest.approx(
        m["map@100"]
    )
