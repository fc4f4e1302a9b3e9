"""An interrupted add or build is finished by running it again, and says so; a build that fails before
storing a photo leaves nothing behind (issue #29)."""

from __future__ import annotations

import json

import pytest

import landmark.pipeline.building as building
from landmark.index import Store
from stand_ins import noise_photos

NONE = ("--set", "whitening.kind=none", "--no-progress")


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt  # as a Ctrl-C (or a kill) between the store's commit and the local features'


def local_features(cli, store) -> dict:
    return json.loads(cli("index", "info", "--store", store).stdout)["local_features"]


def test_an_add_killed_before_the_local_features_is_filled_in_by_the_next(cli, store, tmp_path, monkeypatch):
    more = tmp_path / "more"
    noise_photos(more, [f"m{i}.png" for i in range(4)], seed=5)
    assert local_features(cli, store)["missing"] == 0
    with monkeypatch.context() as m:
        m.setattr(building, "extract_many", interrupted)
        assert cli("index", "add", more, "--store", store, "--no-progress").exit_code != 0
    info = cli("index", "info", "--store", store)
    local = json.loads(info.stdout)["local_features"]
    assert json.loads(info.stdout)["images"] == 10 and (local["images"], local["missing"]) == (6, 4)
    assert "4 stored photo(s) have no local features" in info.stderr
    again = cli("index", "add", more, "--store", store, "--no-progress")
    assert again.exit_code == 0, again.output
    assert "added 0 photos, 0 already present" in again.stdout
    assert "filled in local features of 4 photos that lacked them" in again.stdout
    assert local_features(cli, store)["missing"] == 0
    done = json.loads(cli("index", "add", more, "--store", store, "--json", "--no-progress").stdout)
    assert (done["added"], done["present"], done["filled"]) == (0, 4, 0)


def test_a_store_without_local_features_reports_none(cli, extractor, photos, tmp_path):
    result = cli("index", "build", photos, "--store", tmp_path / "s", "--set", "local.enabled=false", *NONE)
    assert result.exit_code == 0, result.output
    assert local_features(cli, tmp_path / "s") is None


def test_a_build_killed_after_storing_photos_is_kept_and_finished(cli, extractor, photos, tmp_path, monkeypatch):
    store = tmp_path / "store"
    with monkeypatch.context() as m:
        m.setattr(building, "extract_many", interrupted)
        assert cli("index", "build", photos, "--store", store, *NONE).exit_code != 0
    with Store.open(store) as st:
        assert len(st) == 6
    assert local_features(cli, store)["missing"] == 6
    again = cli("index", "build", photos, "--store", store, *NONE)
    assert again.exit_code == 0, again.output
    assert "added 0, already present 0" in again.stdout and "filled in local features of 6 photos" in again.stdout
    assert local_features(cli, store)["missing"] == 0


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable", "killed"])
def test_a_build_that_stores_no_photo_leaves_no_store(cli, extractor, tmp_path, monkeypatch, case):
    data = tmp_path / "data"
    if case != "missing":
        data.mkdir()
    if case == "unreadable":
        (data / "a.jpg").write_text("not a photo")
        (data / "b.jpg").write_bytes(b"")
    if case == "killed":
        noise_photos(data, ["a.png"])
        monkeypatch.setattr(extractor, "extract", interrupted)
    result = cli("index", "build", data, "--store", tmp_path / "store", *NONE)
    assert result.exit_code != 0
    assert case == "killed" or ("error:" in result.stderr and "Traceback" not in result.output)
    if case == "unreadable":
        assert "no photo could be read" in result.stderr and "empty file" in result.stderr
    assert not (tmp_path / "store").exists()
    later = cli("search", tmp_path / "q.jpg", "--store", tmp_path / "store")
    assert later.exit_code == 2 and "no store at" in later.stderr  # not an empty store that answers nothing


def test_a_failed_build_leaves_a_directory_it_did_not_make_as_it_was(cli, extractor, photos, tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert cli("index", "build", tmp_path / "missing", "--store", kept, *NONE).exit_code == 2
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
    store = tmp_path / "store"
    assert cli("index", "build", photos, "--store", store, *NONE).exit_code == 0
    assert cli("index", "build", tmp_path / "missing", "--store", store, *NONE).exit_code == 2  # a failed re-run
    with Store.open(store) as st:
        assert len(st) == 6


def test_an_extraction_cache_is_worth_resuming(cli, extractor, photos, tmp_path, monkeypatch):
    """A long first extraction killed before its commit keeps its finished chunks (the build resumes from them)."""

    def killed_after_a_chunk(items, cache_dir=None, **kw):
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / "chunk-000000.npz").write_bytes(b"finished photos")
        raise KeyboardInterrupt

    monkeypatch.setattr(extractor, "extract", killed_after_a_chunk)
    assert cli("index", "build", photos, "--store", tmp_path / "store", *NONE).exit_code != 0
    assert (tmp_path / "store" / "_work" / "extract-db" / "chunk-000000.npz").exists()
