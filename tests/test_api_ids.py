"""No silent drops: a photo is already in the store only when its content is; a new photo whose name
is a stored id is kept under a new id, and a GLDv2 root whose splits share ids is refused up front."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from landmark.api import Landmarks
from landmark.cli import app
from landmark.config import load_config
from landmark.data import DatasetError
from landmark.index import Store
from stand_ins import ContentExtractor, use_content_extractor

CONFIG = ["local.enabled=false", "whitening.kind=none"]


@pytest.fixture
def extractor(monkeypatch) -> ContentExtractor:
    return use_content_extractor(monkeypatch)


def photo(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="PNG")
    return path


def new_store(tmp_path: Path) -> Landmarks:
    return Landmarks.create(tmp_path / "store", load_config(overrides=CONFIG))


def test_a_new_photo_named_like_a_stored_one_is_kept_under_a_new_id(extractor, tmp_path, caplog):
    lm = new_store(tmp_path)
    first = photo(tmp_path / "a" / "IMG_0001.png", (200, 0, 0))
    assert lm.add_photos([first]).added == {"user": 1}
    other = photo(tmp_path / "b" / "IMG_0001.png", (0, 0, 200))  # a camera's name again, another photo
    with caplog.at_level(logging.WARNING, logger="landmark.api"):
        report = lm.add_photos([other])
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    assert report.added == {"user": 1} and report.skipped == {"user": 0}
    (renamed,) = report.renamed
    assert (renamed.id, renamed.new_id) == ("IMG_0001", f"IMG_0001~{digest[:8]}")
    assert "IMG_0001" in caplog.text and renamed.new_id in caplog.text
    assert sorted(lm.store.keys()) == ["IMG_0001", renamed.new_id]
    hit = lm.store.search(extractor.vector(other)[None], 1)
    assert hit.keys[0][0] == renamed.new_id and hit.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert lm.store.search(extractor.vector(first)[None], 1).keys[0][0] == "IMG_0001"

    # the same photos again, from where they were or copied elsewhere: already present, nothing read
    extractor.read.clear()
    copy = tmp_path / "c" / "IMG_0001.png"
    copy.parent.mkdir()
    shutil.copyfile(other, copy)
    for again in (first, other, copy):
        report = lm.add_photos([again])
        assert report.added == {"user": 0} and report.skipped == {"user": 1} and not report.renamed, again
    assert extractor.read == [] and len(lm.store) == 2


def test_index_add_names_the_taken_id_and_the_new_one(extractor, tmp_path):
    lm = new_store(tmp_path)
    lm.add_photos([photo(tmp_path / "a" / "282bb812c5baaa09.jpg", (10, 200, 10))])
    lm.store.close()
    other = photo(tmp_path / "x" / "282bb812c5baaa09.jpg", (10, 10, 10))
    new_id = f"282bb812c5baaa09~{hashlib.sha256(other.read_bytes()).hexdigest()[:8]}"
    runner = CliRunner()
    result = runner.invoke(
        app, ["index", "add", str(other), "--store", str(tmp_path / "store")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "added 1 photos (1 under a new id)" in result.output
    assert f"282bb812c5baaa09 -> {new_id}" in result.output
    again = runner.invoke(app, ["index", "add", str(other), "--store", str(tmp_path / "store")], catch_exceptions=False)
    assert again.exit_code == 0 and "added 0 photos, 1 already present" in again.output
    with Store.open(tmp_path / "store") as st:
        assert sorted(st.keys()) == ["282bb812c5baaa09", new_id]


def test_a_store_made_before_content_hashes_opens_and_compares_by_its_files(extractor, tmp_path):
    lm = new_store(tmp_path)
    kept = photo(tmp_path / "a" / "IMG_0001.png", (1, 2, 3))
    gone = photo(tmp_path / "a" / "IMG_0002.png", (4, 5, 6))
    lm.add_photos([kept, gone])
    lm.store.close()
    with sqlite3.connect(tmp_path / "store" / "meta.sqlite") as conn:  # as written before the column existed
        conn.execute("ALTER TABLE images DROP COLUMN content")
    gone.unlink()
    lm = Landmarks.open(tmp_path / "store")
    assert lm.store.stored_files(["IMG_0001"])["IMG_0001"].content is None  # the column is back, empty
    copy = tmp_path / "b" / "IMG_0001.png"
    copy.parent.mkdir()
    shutil.copyfile(kept, copy)
    assert lm.add_photos([copy]).skipped == {"user": 1}  # same bytes as the stored file
    assert lm.store.stored_files(["IMG_0001"])["IMG_0001"].content == hashlib.sha256(kept.read_bytes()).hexdigest()
    report = lm.add_photos([photo(tmp_path / "b" / "IMG_0002.png", (4, 5, 6))])  # stored file gone: cannot compare
    (renamed,) = report.renamed
    assert renamed.id == "IMG_0002" and renamed.new_id.startswith("IMG_0002~") and "is gone" in renamed.reason
    assert len(lm.store) == 3


def gldv2(root: Path, train: list[str], index: list[str]) -> Path:
    (root / "train.csv").parent.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("id,url,landmark_id\n" + "".join(f"{i},,{n % 2}\n" for n, i in enumerate(train)))
    (root / "index.csv").write_text("id\n" + "".join(f"{i}\n" for i in index))
    for split, ids in (("train", train), ("index", index)):
        (root / split).mkdir(exist_ok=True)
        for n, i in enumerate(ids):
            photo(root / split / i[0] / i[1] / i[2] / f"{i}.jpg", (n * 40, 90 if split == "train" else 180, 0))
    return root


def test_a_dataset_whose_index_ids_are_train_ids_is_refused_before_extraction(extractor, tmp_path):
    shared = ["abc0000000000001", "abc0000000000002"]
    root = gldv2(tmp_path / "data", ["abc0000000000000", *shared], [*shared, "def0000000000000"])
    with pytest.raises(DatasetError) as caught:
        Landmarks.build(root, tmp_path / "store", load_config(overrides=CONFIG), progress=False)
    message = str(caught.value)
    assert "train.csv" in message and "index.csv" in message and "share 2 photo id(s)" in message
    assert all(i in message for i in shared) and "def0000000000000" not in message
    assert extractor.read == [] and not (tmp_path / "store").exists()


def test_a_resumed_build_skips_the_photos_it_stored(extractor, tmp_path):
    root = gldv2(tmp_path / "data", ["abc0000000000000", "abc0000000000001"], ["def0000000000000"])
    config = load_config(overrides=CONFIG)
    _, first = Landmarks.build(root, tmp_path / "store", config, progress=False)
    assert first.added == {"train": 2, "index": 1}
    extractor.read.clear()
    _, again = Landmarks.build(root, tmp_path / "store", config, progress=False)
    assert again.added == {"train": 0, "index": 0} and again.skipped == {"train": 2, "index": 1}
    assert extractor.read == [] and not again.renamed


def test_test_ids_that_are_database_ids_are_a_warning(tmp_path, caplog):
    """Queries that are also database photos (Oxford / Paris made into this layout) are legitimate."""
    from landmark.data.manifests import check_split_ids

    root = gldv2(tmp_path / "data", ["abc0000000000000"], ["def0000000000000"])
    (root / "test.csv").write_text("id\ndef0000000000000\n")
    (root / "test").mkdir()
    with caplog.at_level(logging.WARNING, logger="landmark.data.manifests"):
        check_split_ids(root, ("train", "index"), queries=("test",))
    assert "test.csv" in caplog.text and "index.csv" in caplog.text and "def0000000000000" in caplog.text
    with pytest.raises(DatasetError, match="def0000000000000"):
        check_split_ids(root, ("index", "test"))  # stored, the two would be one photo
