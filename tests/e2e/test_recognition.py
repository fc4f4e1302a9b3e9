"""The recognition pipeline on real photos: a desk and a street are not reported as confident landmarks,
the store keeps each photo's object prior, calibrate refits thresholds, evaluate prints the ablation."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import landmark
from landmark.cli import app
from landmark.recognition.filters import PROBE_NAME, ClassGroups

runner = CliRunner()


def _photo(root, split, image_id):
    return root / split / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _test_photos_from(gldv2_root, word, n):
    """Test photos chosen by their source (sources.csv), never by the solution files."""
    test = {r["id"] for r in csv.DictReader(open(gldv2_root / "test.csv"))}
    rows = [
        r for r in csv.DictReader(open(gldv2_root / "sources.csv")) if r["id"] in test and word in r["source"].lower()
    ]
    return [_photo(gldv2_root, "test", r["id"]) for r in sorted(rows, key=lambda r: r["source"])[:n]]


@pytest.mark.slow
def test_desk_and_street_are_not_confident_landmarks(mini_store, mini_gldv2, gldv2_root):
    # a batch as a user would send it: a few frames of a desk sequence and of a drive, among landmark photos
    desks = _test_photos_from(gldv2_root, "freiburg", 3) + _test_photos_from(gldv2_root, "/tum/", 2)
    streets = _test_photos_from(gldv2_root, "kitti", 5)
    assert len(desks) == 5 and len(streets) == 5
    rec_rows = list(csv.DictReader(open(mini_gldv2 / "recognition_solution.csv")))
    landmarks = [(_photo(mini_gldv2, "test", r["id"]), int(r["landmarks"])) for r in rec_rows if r["landmarks"]]
    lm = landmark.open(mini_store)
    recs = lm.recognize([str(p) for p, _ in landmarks] + [str(p) for p in desks + streets])
    assert all(r.error is None for r in recs)
    kept = [r.score for r, (_, lab) in zip(recs, landmarks) if r.landmark_id == lab and r.grade != "non-landmark"]
    assert len(kept) >= 0.8 * len(landmarks)  # the filters keep (almost) every landmark photo
    for r in recs[len(landmarks) :]:
        # a filter (object prior, or similarity to the photos it flagged) calls it a non-landmark,
        # so it ranks below every landmark the pipeline kept
        assert r.grade == "non-landmark", (r.query, r.grade, r.score, r.evidence)
        assert r.score < min(kept) and r.score < 0.2
    for r in recs[: len(landmarks)]:
        assert r.grade and r.evidence["neighbours"] and 0 <= r.score <= 1


@pytest.mark.slow
def test_store_keeps_the_object_prior_of_every_photo(mini_store):
    from landmark.index import Store

    with Store.open(mini_store) as st:
        keys = st.keys()
        probs = st.extras(keys, PROBE_NAME)
        assert probs.shape == (len(keys), len(ClassGroups.load().names)) and np.isfinite(probs).all()
        assert np.allclose(probs.sum(1), 1, atol=0.01)  # float16 group probabilities
        assert st.meta_value("prior_groups")[0] == "landmark"


@pytest.mark.slow
def test_calibrate_writes_thresholds_into_the_store(mini_store, mini_gldv2, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(mini_store, store)
    result = runner.invoke(
        app, ["calibrate", str(mini_gldv2), "--store", str(store), "--no-progress"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    cfg = landmark.open(store).store.config.recognition
    from landmark.index import Store

    with Store.open(store) as st:
        report = st.meta_value("calibration")
    assert report["validation"]["landmark_queries"] >= 4
    assert cfg.t1 == report["thresholds"]["t1"] and cfg.t2 == report["thresholds"]["t2"] and cfg.t1 >= cfg.t2
    assert 0.5 <= cfg.prior_object_min <= 0.995
    assert cfg.frequent_rerank == report["thresholds"]["frequent_rerank"]
    assert "t1" in result.stdout and (
        "frequent_rerank" in result.stdout and ("on" in result.stdout or "off" in result.stdout)
    )
    # the DBA / alpha-QE verification threshold, fitted on validation with the known non-landmarks
    with Store.open(store) as st:
        expansion = st.meta_value("expansion_calibration")
    trials = expansion["trials"]
    assert expansion["validation"]["known_non_landmarks"] > 0 and expansion["verify"] == "vote+threshold"
    assert expansion["threshold"] == max(trials, key=lambda t: (t["map"], -t["threshold"]))["threshold"]
    assert landmark.open(store).config.expansion.threshold == expansion["threshold"]
    assert "expansion.threshold" in result.stdout
    # the category re-rank, fitted after DBA / alpha-QE with that threshold
    with Store.open(store) as st:
        category = st.meta_value("category_calibration")
    assert category["expansion"]["threshold"] == expansion["threshold"]
    best = max([category["validation_map_before"]] + [t["map"] for t in category["trials"]])
    assert category["validation_map"] == best and category["enabled"] == (best > category["validation_map_before"])
    opened = landmark.open(store).config.category
    assert (opened.enabled, opened.min_similarity) == (category["enabled"], category["min_similarity"])
    assert "category re-rank" in result.stdout


def counted_fits(monkeypatch, name: str) -> list:
    """Calls of ``<name>`` by ``landmark evaluate`` (still run) are appended to the returned list."""
    import landmark.evaluation.run as run

    fits, real = [], getattr(run, name)
    monkeypatch.setattr(run, name, lambda lm, **kw: fits.append(1) or real(lm, **kw))
    return fits


@pytest.mark.slow
def test_prepare_category_refits_after_other_expansion_settings(mini_store, tmp_path, monkeypatch):
    from landmark.config import load_config
    from landmark.evaluation.run import prepare_category, prepare_expansion

    fits = counted_fits(monkeypatch, "calibrate_category")
    store = shutil.copytree(mini_store, tmp_path / "store")
    explicit = landmark.open(store)
    assert prepare_category(explicit, load_config(overrides=["category.enabled=false"])) is None and not fits
    assert not explicit.config.category.enabled
    report = prepare_category(landmark.open(store), load_config())
    assert len(fits) == 1 and prepare_category(landmark.open(store), load_config()) == report and len(fits) == 1
    lm = landmark.open(store)
    assert lm.config.category.enabled == report["enabled"]
    no_qe = load_config(overrides=["expansion.qe=false"])
    prepare_expansion(lm, no_qe)  # as evaluate does: the expansion first, then the category
    refit = prepare_category(lm, no_qe)  # fitted on another ranking: stale
    assert len(fits) == 2 and refit["expansion"]["qe"] is False
    assert lm.config.category.min_similarity == refit["min_similarity"]
    assert lm.store.meta_value("category_calibration") == report  # for that run only: the store keeps its own


@pytest.mark.slow
def test_prepare_expansion_fits_once_and_keeps_an_explicit_threshold(mini_store, tmp_path, monkeypatch):
    from landmark.config import load_config
    from landmark.evaluation.run import prepare_expansion

    fits = counted_fits(monkeypatch, "calibrate_expansion")
    store = shutil.copytree(mini_store, tmp_path / "store")
    lm = landmark.open(store)
    mine = prepare_expansion(lm, load_config(overrides=["expansion.threshold=0.77"]))
    assert mine is None and not fits and lm.store.meta_value("expansion_calibration") is None
    assert lm.config.expansion.threshold == 0.77
    assert prepare_expansion(lm, load_config(), calibrate=False) is None and not fits  # --no-calibrate
    report = prepare_expansion(lm, load_config())  # never fitted: fits now
    assert len(fits) == 1
    assert lm.config.expansion.threshold == report["threshold"] == lm.store.config.expansion.threshold
    default = landmark.open(store)  # an explicit threshold equal to the default still wins over the fit
    assert prepare_expansion(default, load_config(overrides=["expansion.threshold=0.5"])) is None and len(fits) == 1
    assert default.config.expansion.threshold == 0.5
    again = landmark.open(store)
    assert prepare_expansion(again, load_config()) == report and len(fits) == 1  # fitted once: reused
    assert again.config.expansion.threshold == report["threshold"]
    # fitted for another verifier: fitted again, in memory only (the store searches with its own verifier)
    other = prepare_expansion(landmark.open(store), load_config(overrides=["expansion.verify=threshold"]))
    assert len(fits) == 2 and other["verify"] == "threshold"
    assert lm.store.meta_value("expansion_calibration") == report
    # made with another classifier's priors: stale, fitted again and kept
    lm.store.set_meta_value(
        "expansion_calibration", report | {"validation": report["validation"] | {"prior_source": "x"}}
    )
    prepare_expansion(landmark.open(store), load_config())
    assert len(fits) == 3 and lm.store.meta_value("expansion_calibration")["validation"]["prior_source"] != "x"


@pytest.mark.slow
def test_evaluate_prints_the_ablation_and_per_query_evidence(mini_gldv2, fast_overrides, tmp_path):
    from landmark.config import load_config

    # a store of another configuration is in the way: evaluate says how to replace it, and does
    landmark.Landmarks.create(
        tmp_path / "eval" / "store", load_config(overrides=fast_overrides + ["extract.image_size=160"])
    )
    args = ["evaluate", str(mini_gldv2), "--out", str(tmp_path / "eval"), "--no-progress"]
    for item in fast_overrides:
        args += ["--set", item]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    result = runner.invoke(app, args + ["--overwrite"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    rows = report["metrics"]["recognition_ablation"]
    stages = [r["stage"] for r in rows]
    assert stages[:7] == [
        "kNN only, global descriptor (no regions, no zoom)",
        "kNN only",
        "+ classifier agreement",
        "+ object prior",
        "+ distractor filter",
        "+ grading",
        "+ frequent-landmark re-rank",
    ]
    calibrated = report["recognition"]["calibration"]["thresholds"]
    assert calibrated["frequent_rerank"] == report["recognition"]["config"]["frequent_rerank"]
    # a stage switched off by calibration has a row without figures: the rows add the stages as run
    assert len(stages) == 7
    assert (rows[6]["gap"] is None) == (not calibrated["frequent_rerank"])
    assert rows[2]["gap"] is None and "skipped" in rows[2]["note"]  # ImageNet weights: no classifier
    # the queries' regions were extracted and used; so were those of the calibration's validation photos
    assert report["recognition"]["config"]["regions"] == 3 and report["recognition"]["config"]["zoom"] == 1.0
    val = report["recognition"]["calibration"]["validation"]
    assert val["regions"] == 3 and val["zoom"] == 1.0 and val["photos_with_regions"] == val["landmark_queries"] > 0
    knn = next(p for p in report["predictions"].values() if p["evidence"]["neighbours"])["evidence"]["neighbours"]
    assert [s for _, s, _ in knn] == sorted((s for _, s, _ in knn), reverse=True) and len(
        {k for k, _, _ in knn}
    ) == len(knn)
    assert all(0 <= r["gap"] <= 1 and 0 <= r["accuracy"] <= 1 for r in rows if r["gap"] is not None)
    assert rows[-1]["gap"] == pytest.approx(report["metrics"]["gap"])  # the last row is the configured pipeline
    assert "recognition ablation" in result.stdout and "+ distractor filter" in result.stdout
    p = next(iter(report["predictions"].values()))
    assert {"landmark_id", "score", "grade", "evidence"} <= set(p)
    assert {"knn", "neighbours", "filters", "grade"} <= set(p["evidence"])
    assert report["recognition"]["calibration"]["thresholds"]["t1"] == report["recognition"]["config"]["t1"]
    assert report["expansion"]["calibration"]["threshold"] == report["expansion"]["config"]["threshold"]


@pytest.mark.slow
def test_store_with_a_trained_checkpoint_grades_by_classifier_agreement(
    gldv2_root, fast_overrides, tmp_path, monkeypatch
):
    """A store built from a checkpoint with a head: B1/B2 grades and the classifier's top-k as evidence."""
    import torch

    from landmark.config import load_config
    from landmark.evaluation.recognition_ablation import recognition_ablation
    from landmark.models import build_model, save_checkpoint
    from landmark.models.heads import ArcFace

    names = {47378: "Eiffel_Tower", 90396: "Stonehenge", 55350: "Sydney_Opera_House"}
    rows = list(csv.DictReader(open(gldv2_root / "train.csv")))
    queries, truth = [], {}
    for lab, _name in names.items():
        ids = [r["id"] for r in rows if int(r["landmark_id"]) == lab][:6]
        (tmp_path / "photos" / str(lab)).mkdir(parents=True)
        for i in ids[:5]:
            (tmp_path / "photos" / str(lab) / f"{i}.jpg").symlink_to(_photo(gldv2_root, "train", i))
        queries.append(str(_photo(gldv2_root, "train", ids[5])))
        truth[queries[-1]] = lab
    cfg = load_config(overrides=fast_overrides + ["model.embedding_dim=32"])
    torch.manual_seed(0)
    net = build_model(cfg.model)
    head = ArcFace(32, 3)
    held_out = sorted(f"{p.parent.name}/{p.name}" for p in (tmp_path / "photos").glob("*/*.jpg"))[::3]  # photo ids
    save_checkpoint(
        tmp_path / "model.pt",
        net,
        cfg.model,
        {"classes": sorted(names), "head": head.state_dict(), "head_kind": "arcface", "val_ids": held_out},
    )
    cfg = load_config(overrides=fast_overrides + [f"model.checkpoint={tmp_path / 'model.pt'}"])
    lm, _ = landmark.Landmarks.build(tmp_path / "photos", tmp_path / "store", cfg, progress=False)
    lm = landmark.open(tmp_path / "store")
    assert (
        lm.recognising.recognizer.classifier is not None
        and lm.recognising.recognizer.classifier.classes.tolist() == sorted(names)
    )
    # calibration validates on exactly the photos the model held out
    stored = lm.store.keys()
    assert set(held_out) <= set(stored)
    report = lm.calibrate()
    fitted = report["recognition"]["validation"]
    assert fitted["split"] == "held out by the model" and fitted["landmark_queries"] == len(held_out)
    assert fitted["database_photos"] == len(stored) - len(held_out)
    # 5 held-out photos give the retrieval calibration too few queries: it splits all labelled photos
    assert report["category"]["validation"]["split"] == "by photo"
    from landmark.evaluation import calibration

    monkeypatch.setattr(calibration, "MIN_HELD_QUERIES", 1)
    # with enough of them, the held-out photos are its database and queries and the rest vote
    retrieval = lm.calibrate()["category"]["validation"]
    known = retrieval["known_non_landmarks"]
    assert retrieval["split"] == "held out by the model"
    assert retrieval["queries"] + retrieval["database_photos"] - known == len(held_out)
    # calibrating on photos the model mostly never held out: a split of their own
    others = [k for k in stored if k not in held_out]
    report = lm.calibrate(train_ids=others, expansion=False)
    assert report["recognition"]["validation"]["split"] == report["category"]["validation"]["split"] == "by photo"
    recs = lm.recognize(queries)
    for r in recs:
        clf = r.evidence["classifier"]
        assert len(clf) == 3 and {c[0] for c in clf} == set(names)
        b = "B1" if clf[0][0] == r.evidence["knn"]["landmark_id"] else "B2"
        assert r.grade == "non-landmark" or r.grade.endswith(b)
    ids, vectors, _, extras = lm.embedding.queries(queries, False, with_extras=True)
    rows_ = recognition_ablation(
        lm.recognising.gather(vectors, extras=extras, ids=ids), lm.recognising.recognition_config, truth
    )
    assert rows_[1]["stage"] == "+ classifier agreement" and rows_[1]["gap"] is not None


def test_a_fine_tuned_store_keeps_the_pretrained_object_prior(gldv2_root, fast_overrides, tmp_path):
    """With a checkpoint whose last stages were trained, the store's object priors are the pretrained
    network's; priors made otherwise (an older store) stay stale through later adds until backfilled."""
    import torch

    from landmark.config import load_config
    from landmark.data import ImageRecord
    from landmark.features import GlobalExtractor
    from landmark.models import build_model, save_checkpoint
    from landmark.recognition.filters import ImageNetPrior
    from landmark.recognition.setup import SOURCE_META

    rows = list(csv.DictReader(open(gldv2_root / "train.csv")))
    ids = [r["id"] for r in rows if int(r["landmark_id"]) == 47378][:5]
    (tmp_path / "photos" / "47378").mkdir(parents=True)
    shutil.copy(_photo(gldv2_root, "train", ids[0]), tmp_path / "photos" / "47378" / f"{ids[0]}.jpg")  # removed later
    for i in ids[1:4]:
        (tmp_path / "photos" / "47378" / f"{i}.jpg").symlink_to(_photo(gldv2_root, "train", i))
    cfg = load_config(overrides=fast_overrides)
    net = build_model(cfg.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # "training" changed the last two stages
        for stage in net.backbone.stages()[-2:]:
            for p in stage.parameters():
                p.mul_(1 + 0.5 * torch.randn(p.shape, generator=g))
    save_checkpoint(tmp_path / "model.pt", net, cfg.model)
    lm, _ = landmark.Landmarks.build(
        tmp_path / "photos",
        tmp_path / "store",
        load_config(overrides=fast_overrides + [f"model.checkpoint={tmp_path / 'model.pt'}"]),
        progress=False,
    )
    assert lm.store.meta_value(SOURCE_META).startswith("pretrained tf_efficientnet_lite0 from stage")

    pristine = GlobalExtractor(build_model(cfg.model), cfg.extract, cfg.model)
    pristine.set_probe(PROBE_NAME, ImageNetPrior(pristine.net.backbone, ClassGroups.load()))
    records = [ImageRecord(i, _photo(gldv2_root, "train", i)) for i in ids]
    want = dict(zip(ids, pristine.extract(records, progress=False).extras[PROBE_NAME]))
    keys = lm.store.keys()
    assert np.allclose(
        lm.store.extras(keys, PROBE_NAME), [want[k.rsplit("/", 1)[-1].split(".")[0]] for k in keys], atol=1e-3
    )  # stored as float16

    # a store whose priors another classifier made: adding a photo does not mark them current
    lm.store.set_extras(keys, PROBE_NAME, np.full((len(keys), len(want[ids[0]])), 0.5, np.float32))
    lm.store.set_meta_value(SOURCE_META, "own")
    lm.add_photos([_photo(gldv2_root, "train", ids[4])], landmark_id=47378, progress=False)
    assert lm.store.meta_value(SOURCE_META) == "own"
    (tmp_path / "photos" / "47378" / f"{ids[0]}.jpg").unlink()  # one photo is gone: its prior cannot be redone
    assert lm.ensure_extras(progress=False) == len(ids) - 1
    keys = lm.store.keys()
    got = lm.store.extras(keys, PROBE_NAME)
    for k, row in zip(keys, got):
        if ids[0] in k:
            assert np.isnan(row).all()  # no prior rather than another classifier's
        else:
            assert np.allclose(row, want[k.rsplit("/", 1)[-1].split(".")[0]], atol=1e-3)  # stored as float16
    assert lm.store.meta_value(SOURCE_META).startswith("pretrained")


@pytest.mark.slow
def test_a_whitened_store_keeps_its_trained_classifier(gldv2_root, fast_overrides, tmp_path):
    """PCA-whitened store + trained checkpoint: the head reads the queries' un-whitened descriptors
    (B1/B2 and classifier evidence stay), and those descriptors are never stored."""
    import torch

    from landmark.config import load_config
    from landmark.data import ImageRecord
    from landmark.features.pipeline import DESCRIPTOR_EXTRA
    from landmark.models import build_model, save_checkpoint
    from landmark.models.heads import ArcFace

    names = {47378: "Eiffel_Tower", 90396: "Stonehenge", 55350: "Sydney_Opera_House"}
    rows = list(csv.DictReader(open(gldv2_root / "train.csv")))
    queries = []
    for lab in names:
        ids = [r["id"] for r in rows if int(r["landmark_id"]) == lab][:6]
        (tmp_path / "photos" / str(lab)).mkdir(parents=True)
        for i in ids[:5]:
            (tmp_path / "photos" / str(lab) / f"{i}.jpg").symlink_to(_photo(gldv2_root, "train", i))
        queries.append(str(_photo(gldv2_root, "train", ids[5])))
    cfg = load_config(overrides=fast_overrides + ["model.embedding_dim=32"])
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "model.pt",
        build_model(cfg.model),
        cfg.model,
        {"classes": sorted(names), "head": ArcFace(32, 3).state_dict(), "head_kind": "arcface"},
    )
    cfg = load_config(
        overrides=fast_overrides
        + [f"model.checkpoint={tmp_path / 'model.pt'}", "whitening.kind=pca", "whitening.dim=8"]
    )
    landmark.Landmarks.build(tmp_path / "photos", tmp_path / "store", cfg, progress=False)
    lm = landmark.open(tmp_path / "store")
    assert lm.store.dim == 8 and lm.recognising.recognizer.classifier.unwhitened
    raw = lm.extractor.base.extract([ImageRecord(q, q) for q in queries], progress=False).vectors
    want = lm.recognising.recognizer.classifier.predict(raw, 3)
    recs = lm.recognize(queries)
    for r, labels in zip(recs, want.labels):
        assert [c[0] for c in r.evidence["classifier"]] == labels.tolist()
        assert r.grade == "non-landmark" or r.grade[-2:] in ("B1", "B2")
    keys = lm.store.keys()
    assert lm.store.extras(keys, DESCRIPTOR_EXTRA).shape == (len(keys), 0)
    # a batch whose photo files all fail still classifies its in-memory images
    from PIL import Image

    bad, good = lm.recognize([str(tmp_path / "missing.jpg"), Image.open(queries[0])])
    assert bad.error and [c[0] for c in good.evidence["classifier"]] == want.labels[0].tolist()


@pytest.mark.slow
def test_prepare_recognition_recalibrates_for_other_query_regions(mini_store, tmp_path, monkeypatch):
    """Thresholds fitted with (or without) query regions are stale for a run that votes the other way; a
    run's own override is fitted for that run only, and a store calibrated before regions votes without."""
    import landmark.evaluation.run as run
    import landmark.recognition.calibrate as calibrate
    from landmark.config import load_config
    from landmark.evaluation.run import prepare_recognition
    from landmark.index import Store

    calls, real = [], calibrate.calibrate_store
    import landmark.evaluation.calibration as calibration

    for caller in (run, calibration):  # `landmark evaluate` and Landmarks.calibrate
        monkeypatch.setattr(
            caller, "calibrate_store", lambda rec, **kw: calls.append(rec.recognition_config.regions) or real(rec, **kw)
        )
    store = shutil.copytree(mini_store, tmp_path / "store")
    first = prepare_recognition(landmark.open(store), load_config())
    n = len(calls)  # 0 if the fixture's store was calibrated with regions already
    assert first["validation"]["regions"] == 3
    assert prepare_recognition(landmark.open(store), load_config()) == first and len(calls) == n
    off = landmark.open(store)
    report = prepare_recognition(off, load_config(overrides=["recognition.regions=1"]))
    assert calls[n:] == [1] and report["validation"]["regions"] == 1 and off.recognising.recognition_config.regions == 1
    # that fit was not kept: the store still votes with its regions, by its own thresholds
    assert (
        off.store.meta_value(calibrate.CALIBRATION_META) == first
        and landmark.open(store).recognising.recognition_config.regions == 3
    )
    # a store calibrated before regions existed votes without them until it is calibrated again
    old = first | {
        "validation": {
            k: v for k, v in first["validation"].items() if k not in ("regions", "zoom", "photos_with_regions")
        }
    }
    off.store.set_meta_value(calibrate.CALIBRATION_META, old)
    lm = landmark.open(store)
    assert (lm.recognising.recognition_config.regions, lm.recognising.recognition_config.zoom) == (1, 1.0)
    lm.calibrate(expansion=False, category=False)
    assert calls[-1] == 3 and landmark.open(store).recognising.recognition_config.regions == 3
    # a run with the zoomed read is fitted for itself (the non-landmark queries read with their views too);
    # the store keeps its own fit
    n, zoomed = len(calls), landmark.open(store)
    report = prepare_recognition(zoomed, load_config(overrides=["recognition.zoom=2"]))
    assert (
        len(calls) == n + 1
        and report["validation"]["zoom"] == 2.0
        and zoomed.recognising.recognition_config.zoom == 2.0
    )
    assert report["validation"]["photos_with_regions"] == report["validation"]["landmark_queries"]
    assert landmark.open(store).recognising.recognition_config.zoom == 1.0
    assert calibrate.calibrated_views(zoomed.store.meta_value(calibrate.CALIBRATION_META)) == (3, 1.0)
    # the user's explicit settings beat the store's fitted ones, also where they equal the defaults
    with Store.open(store) as st:
        st.update_config(
            dataclasses.replace(
                st.config, recognition=dataclasses.replace(st.config.recognition, t1=0.7, frequent_rerank=False)
            )
        )
    mine = landmark.open(store)
    prepare_recognition(mine, load_config(overrides=["recognition.t1=0.9", "recognition.frequent_rerank=true"]))
    assert mine.recognising.recognition_config.t1 == 0.9 and mine.recognising.recognition_config.frequent_rerank
    stores = landmark.open(store)
    prepare_recognition(stores, load_config())
    assert stores.recognising.recognition_config.t1 == 0.7 and not stores.recognising.recognition_config.frequent_rerank


def _detector_files(tmp_path, label_index):
    """A constant ONNX detector whose one box covers its whole 32 x 64 input at score 0.9, labelled
    ``label_index`` of: 0 Person (non-landmark), 1 Tower (landmark part)."""
    from onnx_helpers import constant_detector

    tmp_path.mkdir(parents=True, exist_ok=True)
    constant_detector(tmp_path / "det.onnx", [[0, 0, 32, 64]], [0.9], [label_index])
    (tmp_path / "labels.txt").write_text("Person\nTower\n")
    (tmp_path / "roles.yaml").write_text("Person: non_landmark\nTower: landmark\n")
    return {
        "detector": str(tmp_path / "det.onnx"),
        "detector_labels": str(tmp_path / "labels.txt"),
        "detector_roles": str(tmp_path / "roles.yaml"),
    }


@pytest.mark.slow
def test_a_configured_onnx_detector_filters_recognition(mini_store, eiffel_query, tmp_path):
    from dataclasses import replace

    lm = landmark.open(mini_store)
    plain = lm.recognize([str(eiffel_query)])[0]
    assert plain.landmark_id == 47378 and "detector" not in plain.evidence["filters"]

    # a landmark part (a tower) present: the detector keeps the photo, whatever the object prior says
    # (this small test model's ImageNet prior takes this Eiffel Tower photo for an object)
    lm.recognising.set_recognition_config(
        replace(lm.recognising.recognition_config, **_detector_files(tmp_path / "tower", 1))
    )
    tower = lm.recognize([eiffel_query])[0]
    assert tower.evidence["filters"]["detector"]["decision"] == "landmark"
    assert tower.evidence["filters"]["non_landmark"] == [] and tower.grade != "non-landmark"
    assert tower.landmark_id == 47378

    # a person covering the whole photo at score 0.9: the paper's rule calls it a non-landmark
    lm.recognising.set_recognition_config(
        replace(lm.recognising.recognition_config, **_detector_files(tmp_path / "person", 0))
    )
    person = lm.recognize([str(eiffel_query)])[0]
    assert person.evidence["filters"]["detector"]["decision"] == "non_landmark"
    assert "detector" in person.evidence["filters"]["non_landmark"]
    assert person.grade == "non-landmark" and person.score < tower.score
    # ... not when the area rule is not met (the detector's settings are read)
    lm.recognising.set_recognition_config(replace(lm.recognising.recognition_config, detector_area_min=1.01))
    uncertain = lm.recognize([str(eiffel_query)])[0]
    assert uncertain.evidence["filters"]["detector"]["decision"] == "uncertain"
    assert "detector" not in uncertain.evidence["filters"]["non_landmark"]
    # switched off with the object prior: the detector does not even run
    lm.recognising.set_recognition_config(
        replace(lm.recognising.recognition_config, detector_area_min=0.6, object_prior=False)
    )
    off = lm.recognize([str(eiffel_query)])[0]
    assert "detector" not in off.evidence["filters"] and off.grade != "non-landmark"


@pytest.mark.slow
def test_recognize_cli_runs_the_store_s_detector(mini_store, eiffel_query, tmp_path):
    from dataclasses import replace

    from landmark.index import Store

    store = shutil.copytree(mini_store, tmp_path / "store")
    with Store.open(store) as st:
        st.update_config(replace(st.config, recognition=replace(st.config.recognition, **_detector_files(tmp_path, 0))))
    result = runner.invoke(app, ["recognize", str(eiffel_query), "--store", str(store), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.output)[0]
    assert rec["evidence"]["filters"]["detector"]["decision"] == "non_landmark" and rec["grade"] == "non-landmark"
