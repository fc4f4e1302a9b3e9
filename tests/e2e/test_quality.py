"""Robust by default on real photos: retrieval-only evaluation of a collection without labels, a store
with one labelled photo per landmark keeping its safe defaults, and the quality suite over several sets."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import landmark.evaluation.run as evaluation_run
from landmark.api import Landmarks
from landmark.cli import app
from landmark.config import RecognitionConfig, load_config
from landmark.data.manifests import read_gldv2
from landmark.evaluation.quality import run_suite
from landmark.retrieval.expansion import knn as expansion_knn

runner = CliRunner()
GLOBAL_ONLY = ["local.enabled=false", "rerank.enabled=false"]


def _unlabelled_copy(src: Path, dst: Path, *, stubs: bool) -> Path:
    """``src`` less its labels (no train split, no recognition solution); with ``stubs`` its index and
    test parts are link stubs (text files naming the relative target), as a copy without symlinks holds."""
    dst.mkdir(parents=True)
    for name in ("index", "test"):
        for part in (name, f"{name}.csv"):
            if stubs:
                (dst / part).write_text(os.path.relpath(src / part, dst))
            else:
                (dst / part).symlink_to(src / part)
    shutil.copy(src / "retrieval_solution.csv", dst)
    return dst


def _one_photo_per_landmark(src: Path, dst: Path) -> Path:
    """``src`` with one labelled train photo per landmark (the regime of a personal album or GLDv2's tail)."""
    dst.mkdir(parents=True)
    rows = (src / "train.csv").read_text().splitlines()
    seen, keep = set(), [rows[0]]
    for line in rows[1:]:
        label = line.rsplit(",", 1)[1]
        if label not in seen:
            seen.add(label)
            keep.append(line)
    (dst / "train.csv").write_text("\n".join(keep) + "\n")
    for part in ("train", "index", "test"):
        (dst / part).symlink_to(src / part)
    for part in ("index.csv", "test.csv", "recognition_solution.csv", "retrieval_solution.csv", "label_names.csv"):
        shutil.copy(src / part, dst)
    return dst


@pytest.mark.slow
@pytest.mark.real_minimums
def test_evaluate_scores_retrieval_of_a_collection_without_labels(mini_gldv2, fast_overrides, tmp_path):
    data = _unlabelled_copy(mini_gldv2, tmp_path / "unlabelled", stubs=True)
    assert len(read_gldv2(data, "index")) == len(read_gldv2(mini_gldv2, "index"))  # the link stubs are followed
    out = tmp_path / "eval"
    args = ["evaluate", str(data), "--out", str(out), "--no-progress"]
    for o in fast_overrides + GLOBAL_ONLY:
        args += ["--set", o]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "recognition not scored: no labelled photos" in " ".join(res.output.split())
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert m["gap"] is None and m["map@100"] is not None and m["map@100"] > 0.3
    assert set(m["skipped"]) == {"recognition"}
    stages = {r["stage"]: r for r in m["retrieval_stages"]}
    # nothing labelled can verify a neighbour: DBA / alpha-QE and the category re-rank are off, and say why
    assert stages["+ DBA"]["map"] is None and stages["+ category re-rank"]["map"] is None
    assert "safe default" in report["expansion"]["calibration"]["decision"]
    assert m["map@100"] == pytest.approx(stages["plain kNN"]["map"])
    assert not (out / "submission_recognition.csv").exists() and (out / "submission_retrieval.csv").is_file()


def test_evaluate_refuses_a_dataset_with_nothing_to_score_before_any_work(tmp_path):
    data = tmp_path / "queries-only"
    (data / "test").mkdir(parents=True)
    (data / "test.csv").write_text("id\nabc123\n")
    res = runner.invoke(app, ["evaluate", str(data), "--out", str(tmp_path / "out")])
    assert res.exit_code != 0
    assert "nothing to evaluate" in " ".join(res.output.split())
    assert not (tmp_path / "out" / "store").exists()


@pytest.mark.slow
@pytest.mark.real_minimums
def test_calibration_with_one_labelled_photo_per_landmark_keeps_the_defaults(mini_gldv2, fast_overrides, tmp_path):
    data = _one_photo_per_landmark(mini_gldv2, tmp_path / "one-each")
    config = load_config(overrides=fast_overrides + GLOBAL_ONLY)
    lm, _ = Landmarks.build(data, tmp_path / "store", config, progress=False)
    fitted = lm.calibrate(progress=False)
    rec = fitted["recognition"]
    defaults = RecognitionConfig()
    assert rec["defaults_kept"] is True
    # no threshold fitted from nothing: the configured ones stay; stages nothing can validate are off
    assert rec["thresholds"]["distractor_threshold"] == defaults.distractor_threshold
    assert (rec["thresholds"]["t1"], rec["thresholds"]["t2"]) == (defaults.t1, defaults.t2)
    assert (
        lm.recognising.recognition_config.grading is False
        and lm.recognising.recognition_config.frequent_rerank is False
    )
    assert fitted["expansion"]["dba"] is False and fitted["expansion"]["qe"] is False
    assert lm.config.expansion.dba is False and fitted["category"]["enabled"] is False
    assert "safe default" in fitted["expansion"]["decision"] and "safe default" in rec["decisions"]["grading"]
    reopened = Landmarks.open(tmp_path / "store")  # kept in the store
    assert reopened.store.config.expansion.dba is False and reopened.store.config.recognition.grading is False


@pytest.mark.slow
def test_quality_suite_reports_every_set_side_by_side(mini_gldv2, fast_overrides, tmp_path):
    unlabelled = _unlabelled_copy(mini_gldv2, tmp_path / "sets" / "mini-unlabelled", stubs=False)
    suite = run_suite(
        [mini_gldv2, unlabelled],
        tmp_path / "quality",
        lambda: load_config(overrides=fast_overrides + GLOBAL_ONLY),
        progress=False,
    )
    written = json.loads((tmp_path / "quality" / "quality.json").read_text())
    assert list(written["sets"]) == [mini_gldv2.name, "mini-unlabelled"] == list(suite["sets"])
    labelled, bare = written["sets"][mini_gldv2.name], written["sets"]["mini-unlabelled"]
    for s in (labelled, bare):
        assert s["map@100"] is not None and s["plain_knn_map@100"] is not None
        assert s["retrieval_stages"][0]["stage"] == "plain kNN"
        assert any(c["rule"] == "submitted mAP@100 >= plain kNN" for c in s["checks"])
    assert labelled["gap"] is not None and labelled["knn_gap"] is not None
    assert any(c["rule"] == "pipeline GAP >= kNN-only GAP" for c in labelled["checks"])
    assert bare["gap"] is None and "recognition" in bare["skipped"]


@pytest.mark.slow
@pytest.mark.real_minimums
def test_too_few_labels_fall_back_to_dba_verified_by_local_features(mini_gldv2, fast_overrides, tmp_path):
    data = _one_photo_per_landmark(mini_gldv2, tmp_path / "one-each")
    lm, _ = Landmarks.build(data, tmp_path / "store", load_config(overrides=fast_overrides), progress=False)
    fitted = lm.calibrate(progress=False)["expansion"]
    # nothing labelled validates a vote or a similarity threshold; local-feature inliers need neither
    assert (fitted["dba"], fitted["qe"], fitted["verify"]) == (True, False, "inliers")
    assert "local features only" in fitted["decision"] and "safe default" in fitted["decision"]
    reopened = Landmarks.open(tmp_path / "store", warm=False)
    assert reopened.store.config.expansion.verify == "inliers" and reopened.store.config.expansion.dba
    expanded = reopened.searching.expanded_search(["index"])
    plain = reopened.store.vectors(expanded.keys)
    moved = np.flatnonzero(np.abs(expanded.vectors - plain).max(axis=1) > 1e-4)
    assert 0 < len(moved) < len(plain)  # some photos verified a neighbour; the rest keep their descriptors
    keys = [expanded.keys[i] for i in moved[:3]]
    sims, idx = expansion_knn(plain, plain, 11)
    got = reopened.searching.stored_pair_inliers(keys, [[expanded.keys[j] for j in idx[i]] for i in moved[:3]])
    assert (got >= reopened.config.rerank.verified_inliers).any(axis=1).all()  # each moved one has a verified one
    # a second calibration (e.g. after labelled photos came) starts from the configured verifier, not the fallback
    again = reopened.calibrate(progress=False)["expansion"]
    assert again["configured"]["verify"] == "vote+threshold"
    # an evaluate of the store keeps what calibration decided: not stale for the configured verifier
    fresh = Landmarks.open(tmp_path / "store", warm=False)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(evaluation_run, "calibrate_expansion", lambda *a, **kw: pytest.fail("recalibrated a current store"))
        kept = evaluation_run.prepare_expansion(fresh, load_config(overrides=fast_overrides))
    assert kept is not None and kept["verify"] == "inliers"
    assert (fresh.config.expansion.verify, fresh.config.expansion.dba, fresh.config.expansion.qe) == (
        "inliers",
        True,
        False,
    )
