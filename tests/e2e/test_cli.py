"""The CLI as a user runs it, on real photos."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import landmark
from landmark.cli import app

pytestmark = pytest.mark.slow  # builds stores from real photos through the CLI

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


def test_search_eiffel_returns_eiffel_first(mini_store, eiffel_query):
    result = run("search", eiffel_query, "--store", mini_store, "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    (hit,) = json.loads(result.output)
    labelled = [m for m in hit["matches"] if m["landmark_id"] is not None]
    assert hit["matches"][0]["landmark_id"] in (47378, None)
    assert labelled and all(m["landmark_id"] == 47378 for m in labelled[:3])
    assert hit["matches"][0]["score"] >= hit["matches"][-1]["score"]
    # the table view names the landmark too
    table = run("search", eiffel_query, "--store", mini_store, "-k", "3")
    assert "Eiffel_Tower" in table.output


def test_search_expand_flags(mini_store, eiffel_query):
    """--no-expand gives the plain cosine ranking of the API, --expand the DBA + alpha-QE one."""
    import landmark

    lm = landmark.open(mini_store)
    for flag, expand in (("--no-expand", False), ("--expand", True)):
        result = run("search", eiffel_query, "--store", mini_store, "-k", "5", "--no-rerank", flag, "--json")
        assert result.exit_code == 0, result.output
        (hit,) = json.loads(result.output)
        want = lm.search([str(eiffel_query)], k=5, rerank=False, expand=expand)[0]
        assert [m["id"] for m in hit["matches"]] == [m.id for m in want.matches]
        assert [m["score"] for m in hit["matches"]] == [m.score for m in want.matches]
    plain = lm.search([str(eiffel_query)], k=5, rerank=False, expand=False)[0]
    assert [m.score for m in plain.matches] != [m.score for m in want.matches]


def test_recognize_photo_and_bad_files(mini_store, eiffel_query, tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is text")
    data = eiffel_query.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    result = run(
        "recognize",
        eiffel_query,
        tmp_path / "zero.jpg",
        tmp_path / "notes.jpg",
        tmp_path / "cut.jpg",
        tmp_path / "missing.jpg",
        "--store",
        mini_store,
        "--json",
    )
    assert result.exit_code == 1  # the good photo is answered; the status says not all were
    out = json.loads(result.stdout)
    assert len(out) == 1 and out[0]["landmark_id"] == 47378 and out[0]["name"] == "Eiffel_Tower"
    assert 0 < out[0]["score"] <= 1 and 1 <= out[0]["votes"] <= 5
    err = result.stderr
    assert "4 photo(s) could not be read" in err
    assert "zero.jpg: empty file" in err and "notes.jpg: not a recognised image format" in err
    assert "cut.jpg: truncated" in err and "missing.jpg: " in err
    # every photo unreadable: no row (piped, the header of the tab-separated rows alone), a failing status
    result = run("recognize", tmp_path / "zero.jpg", "--store", mini_store)
    assert result.exit_code == 1 and "empty file" in result.stderr
    assert result.stdout.splitlines() == ["photo\tlandmark_id\tlandmark\tscore\tgrade\tvotes\tpath"]


def test_search_reports_unreadable_query(mini_store, tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    result = run("search", tmp_path / "zero.jpg", "--store", mini_store)
    assert result.exit_code == 1 and "empty file" in result.stderr
    # a folder is searched photo by photo, as recognize reads it
    folder = tmp_path / "queries"
    folder.mkdir()
    (folder / "zero.jpg").write_bytes(b"")
    result = run("search", folder, "--store", mini_store, "--json")
    assert result.exit_code == 1 and [r["query"] for r in json.loads(result.stdout)] == [str(folder / "zero.jpg")]
    for k in ("0", "-1"):
        result = run("search", tmp_path / "zero.jpg", "--store", mini_store, "-k", k)
        assert result.exit_code == 2 and "-k" in result.stderr, k
    with pytest.raises(ValueError, match="k must be at least 1"):
        landmark.open(mini_store).search([str(tmp_path / "zero.jpg")], k=0)


def test_index_add_info_remove(mini_store, eiffel_query, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(mini_store, store)
    before = json.loads(run("index", "info", "--store", store).stdout)["images"]
    added = run("index", "add", eiffel_query, "--store", store, "--landmark-id", "47378", "--no-progress")
    assert added.exit_code == 0 and "added 1 photos" in added.stdout
    result = run("search", eiffel_query, "--store", store, "-k", "1", "--json")
    top = json.loads(result.stdout)[0]["matches"][0]
    assert top["id"] == eiffel_query.stem and top["score"] > 0.999
    assert json.loads(run("index", "info", "--store", store).stdout)["images"] == before + 1
    removed = run("index", "remove", eiffel_query.stem, "--store", store)
    assert removed.exit_code == 0 and "removed 1 of 1" in removed.stdout
    removed = run("index", "remove", eiffel_query.stem, "no-such-photo", "--store", store)  # both unknown now
    assert removed.exit_code == 1 and "removed 0 of 2" in removed.stdout
    assert f"not in the store: {eiffel_query.stem}, no-such-photo" in removed.stderr
    assert json.loads(run("index", "info", "--store", store).stdout)["images"] == before


def test_store_refuses_another_model(mini_gldv2, mini_store):
    result = run(
        "index",
        "build",
        mini_gldv2,
        "--store",
        mini_store,
        "--set",
        "extract.image_size=256",
        "--set",
        "model.backbone=tf_efficientnet_lite0",
        "--no-progress",
    )
    assert result.exit_code == 2
    assert "was built with" in result.stderr and '"image_size": 224' in result.stderr


def test_learned_whitening_without_labels_is_refused_before_any_store(eiffel_query, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(eiffel_query.read_bytes())
    result = run(
        "index",
        "build",
        photos,
        "--store",
        tmp_path / "store",
        "--preset",
        "lite2-gem-lw",
        "--set",
        "model.backbone=tf_efficientnet_lite0",
        "--no-progress",
    )
    assert result.exit_code == 2
    assert "learned from labelled photos" in result.stderr and "whitening.kind=pca" in result.stderr
    assert not (tmp_path / "store").exists()


def test_missing_store_exit_2_with_message(tmp_path):
    result = run("search", tmp_path / "x.jpg", "--store", tmp_path / "nostore")
    assert result.exit_code == 2 and "no store at" in result.stderr


def test_evaluate_without_data_explains_how_to_get_it(tmp_path):
    result = run("evaluate", tmp_path / "missing")
    assert result.exit_code == 2
    assert "GLDv2" in result.stderr and "LANDMARK_DATA" in result.stderr


def test_evaluate_writes_report_and_submissions(mini_gldv2, fast_overrides, tmp_path):
    args = ["evaluate", mini_gldv2, "--out", tmp_path / "eval", "--no-progress"]
    for item in fast_overrides:
        args += ["--set", item]
    result = run(*args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    m = report["metrics"]
    assert m["queries"] == 16 and m["landmark_queries"] == 12
    assert m["gap"] > 0.7 and m["accuracy"] > 0.7 and m["map@100"] > 0.5
    rec = (tmp_path / "eval" / "submission_recognition.csv").read_text().splitlines()
    assert rec[0] == "id,landmarks" and len(rec) == 17
    ret = (tmp_path / "eval" / "submission_retrieval.csv").read_text().splitlines()
    assert ret[0] == "id,images" and len(ret) == 17
    assert "GAP" in result.stdout and "mAP@100" in result.stdout
    # a second run reuses the store: nothing is extracted again for the database
    again = json.loads((tmp_path / "eval" / "report.json").read_text())
    run(*args)
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["build"]["added"] == {"train": 0, "index": 0}
    assert again["build"]["added"]["train"] == 40


def test_index_build_calibrates_a_labelled_store_once(mini_gldv2, fast_overrides, tmp_path):
    from landmark.index import Store

    sets = [a for item in fast_overrides for a in ("--set", item)]
    store = tmp_path / "store"
    built = run("index", "build", mini_gldv2, "--store", store, *sets, "--no-progress")
    assert built.exit_code == 0, built.output
    assert (
        "calibrated on" in built.stdout and "expansion.threshold" in built.stdout and "category re-rank" in built.stdout
    )
    with Store.open(store) as st:
        recognition, expansion = st.meta_value("calibration"), st.meta_value("expansion_calibration")
        assert st.config.recognition.t1 == recognition["thresholds"]["t1"]
        assert st.config.expansion.threshold == expansion["threshold"]
        assert st.config.category.enabled == st.meta_value("category_calibration")["enabled"]
    again = run("index", "build", mini_gldv2, "--store", store, *sets, "--no-progress")  # already calibrated
    assert again.exit_code == 0 and "calibrated on" not in again.stdout
    other = tmp_path / "other"
    skipped = run("index", "build", mini_gldv2, "--store", other, *sets, "--no-progress", "--no-calibrate")
    assert skipped.exit_code == 0 and "calibrated on" not in skipped.stdout
    with Store.open(other) as st:
        assert st.meta_value("calibration") is None and st.meta_value("expansion_calibration") is None
    mine = tmp_path / "mine"  # an explicit expansion.threshold is not fitted over
    kept = run(
        "index",
        "build",
        mini_gldv2,
        "--store",
        mine,
        *sets,
        "--set",
        "expansion.threshold=0.66",
        "--set",
        "recognition.t1=0.97",
        "--no-progress",
    )
    assert kept.exit_code == 0 and "calibrated on" in kept.stdout and "expansion.threshold" not in kept.stdout
    with Store.open(mine) as st:
        assert st.config.expansion.threshold == 0.66 and st.meta_value("expansion_calibration") is None
        # so is an explicit recognition setting: the store keeps it over the fitted value
        assert st.config.recognition.t1 == 0.97 != st.meta_value("calibration")["thresholds"]["t1"]


def test_repeated_model_concatenates_the_trained_models(mini_gldv2, fast_overrides, tmp_path):
    from landmark.config import load_config
    from landmark.models import build_model, save_checkpoint

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((mini_gldv2 / "train").rglob("*.jpg"))[:3]:
        (photos / p.name).symlink_to(p)
    nets = {}
    for name, backbone in (("a.pt", "tf_efficientnet_lite0"), ("b.pt", "mobilenet_v2")):
        cfg = load_config(overrides=fast_overrides + [f"model.backbone={backbone}"])
        nets[name] = build_model(cfg.model)
        save_checkpoint(tmp_path / name, nets[name], cfg.model, {"classes": []})
    sets = [a for item in fast_overrides for a in ("--set", item)]
    models = ["--model", tmp_path / "a.pt", "--model", tmp_path / "b.pt"]
    built = run("index", "build", photos, "--store", tmp_path / "store", *models, *sets, "--no-progress")
    assert built.exit_code == 0, built.output
    config = landmark.open(tmp_path / "store").store.config
    assert config.model.checkpoint == str(tmp_path / "a.pt")
    (member,) = config.ensemble
    assert member.checkpoint == str(tmp_path / "b.pt") and member.backbone == "mobilenet_v2"
    assert landmark.open(tmp_path / "store").extractor.dim == nets["a.pt"].dim + nets["b.pt"].dim
    # the store's models, named again, open it; one of them alone is told to give both
    again = run("index", "build", photos, "--store", tmp_path / "store", *models, *sets, "--no-progress")
    assert again.exit_code == 0 and "already present 3" in again.stdout
    one = run(
        "index", "build", photos, "--store", tmp_path / "store", "--model", tmp_path / "a.pt", *sets, "--no-progress"
    )
    assert one.exit_code == 2
    assert f"--model {tmp_path / 'a.pt'} --model {tmp_path / 'b.pt'}" in " ".join(one.stderr.split())
    both = run(
        "index",
        "build",
        photos,
        "--store",
        tmp_path / "other",
        *models,
        *sets,
        "--set",
        "ensemble=[{backbone: mobilenet_v2}]",
        "--no-progress",
    )
    assert both.exit_code == 2 and "not both" in both.stderr


def test_cluster_writes_pseudo_landmarks_of_the_index_split(mini_store, tmp_path):
    from landmark.data.manifests import read_labels

    lm = landmark.open(mini_store)
    index_ids = set(lm.store.keys("index"))
    known = set(lm.recognising.recognizer.known_non_landmarks()[0])
    result = run("cluster", "--store", mini_store, "--out", tmp_path / "c.csv", "--neighbours", "3")
    assert result.exit_code == 0, result.output
    labels = read_labels(tmp_path / "c.csv")
    assert labels and set(labels) <= index_ids - known  # index photos, none known not to be a landmark
    assert f"{len(labels)} of {len(index_ids - known)} photos of split 'index'" in result.output
    assert "labelled photos" in result.output  # the threshold was chosen on them
    every = run("cluster", "--store", mini_store, "--out", tmp_path / "all.csv", "--all-photos", "--threshold", "0.5")
    assert (
        every.exit_code == 0
        and f"of {len(index_ids)} photos" in every.output
        and "threshold 0.500 (given)" in every.output
    )
    none = run("cluster", "--store", mini_store, "--out", tmp_path / "none.csv", "--threshold", "1.0")
    assert none.exit_code == 1 and read_labels(tmp_path / "none.csv") == {} and "nothing to train on" in none.output
    assert run("cluster", "--store", mini_store, "--out", tmp_path / "x.csv", "--threshold", "1.5").exit_code == 2
    missing = run("cluster", "--store", mini_store, "--out", tmp_path / "x.csv", "--split", "test")
    assert missing.exit_code == 2 and "no photos of split 'test'" in missing.output
