"""Manifests: plain folders, GLDv2 CSV layouts and solutions, command-line photos, and gldv2-mini."""

from __future__ import annotations

from pathlib import Path

import pytest

from landmark.data import (
    DatasetError,
    ImageRecord,
    Manifest,
    gldv2_image_path,
    is_gldv2,
    read_dataset,
    read_folder,
    read_gldv2,
    read_gldv2_solution,
    read_photos,
)


def touch(root: Path, *names: str) -> None:
    """Create (placeholder) files; manifests never decode them."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- plain folders ---------------------------------------------------------------------------


def test_folder_of_landmark_subfolders(tmp_path):
    root = tmp_path / "landmarks"
    touch(
        root,
        "12/a.jpg",
        "12/deep/er/b.png",
        "eiffel/c.JPG",
        "eiffel/notes.txt",
        "eiffel/.d.jpg",
        ".hidden/x.jpg",
        ".top.jpg",
        "loose.webp",
        "empty-landmark/readme.md",
    )
    m = read_folder(root)
    assert m.name == "landmarks" and m.root == root and m.labelled
    assert [(r.id, r.landmark_id) for r in m] == [
        ("12/a.jpg", 12),
        ("12/deep/er/b.png", 12),
        ("eiffel/c.JPG", 0),
        ("loose.webp", None),
    ]
    assert all(r.path == root / r.id for r in m)
    assert m.label_names == {12: "12", 0: "eiffel"}  # folders without photos are no landmark


def test_folder_forced_unlabelled(tmp_path):
    touch(tmp_path, "12/a.jpg", "eiffel/c.jpg")
    m = read_folder(tmp_path, labelled=False)
    assert m.ids() == ["12/a.jpg", "eiffel/c.jpg"]
    assert not m.labelled and m.label_names == {}


def test_folder_names_get_free_ids_in_sorted_order(tmp_path):
    touch(tmp_path, "1/a.jpg", "zeta/a.jpg", "alpha/a.jpg", "beta/a.jpg")
    m = read_folder(tmp_path)
    assert m.label_names == {1: "1", 0: "alpha", 2: "beta", 3: "zeta"}  # 1 is taken by folder "1"
    assert {r.id.split("/")[0]: r.landmark_id for r in m} == {"1": 1, "alpha": 0, "beta": 2, "zeta": 3}


def test_folder_names_meaning_the_same_id_are_refused(tmp_path):
    touch(tmp_path, "7/a.jpg", "007/b.jpg")
    with pytest.raises(DatasetError, match="'007' and '7'"):
        read_folder(tmp_path)


def test_flat_folder_is_unlabelled(tmp_path):
    touch(tmp_path, "b.png", "a.jpg", "c.tiff", "skip.txt")
    m = read_folder(tmp_path)
    assert m.ids() == ["a.jpg", "b.png", "c.tiff"] and not m.labelled
    with pytest.raises(DatasetError, match="no sub-folders with images"):
        read_folder(tmp_path, labelled=True)


def test_symlinked_folder_followed_once(tmp_path):
    touch(tmp_path, "real/a.jpg")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real")  # a cycle must not hang or duplicate
    assert read_folder(tmp_path, labelled=False).ids() == ["real/a.jpg"]


@pytest.mark.parametrize("files", [(), ("notes.txt", ".hidden.jpg", "sub/readme.md")])
def test_folder_without_images(tmp_path, files):
    touch(tmp_path, *files)
    with pytest.raises(DatasetError, match="no images found"):
        read_folder(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="no such directory"):
        read_folder(tmp_path / "nope")


# -- GLDv2 layout ----------------------------------------------------------------------------


@pytest.fixture
def gldv2(tmp_path) -> Path:
    root = tmp_path / "gld"
    root.mkdir()
    write(root / "train.csv", "id,url,landmark_id\nabc0001,,5\nabd0002,http://x/y.jpg,5\nfff0003,,9\n")
    write(root / "index.csv", "id,extra\n1230004,whatever\n")
    write(root / "test.csv", "id\n9990005\n9990006\n")
    write(root / "label_names.csv", 'landmark_id,name\n5,Eiffel_Tower\n9,"Tower, Leaning"\n')
    for split, ids in {
        "train": ["abc0001", "abd0002", "fff0003"],
        "index": ["1230004"],
        "test": ["9990005", "9990006"],
    }.items():
        for i in ids:
            touch(root, str(gldv2_image_path(root, split, i).relative_to(root)))
    return root


def test_gldv2_image_path():
    assert gldv2_image_path(Path("/d"), "train", "ce6d65caba19cf89") == Path("/d/train/c/e/6/ce6d65caba19cf89.jpg")


def test_read_gldv2_splits(gldv2):
    train = read_gldv2(gldv2, "train", check_files=True)
    assert train.name == "train" and train.root == gldv2
    assert [(r.id, r.landmark_id) for r in train] == [("abc0001", 5), ("abd0002", 5), ("fff0003", 9)]
    assert all(r.path == gldv2_image_path(gldv2, "train", r.id) for r in train)
    assert train.label_names == {5: "Eiffel_Tower", 9: "Tower, Leaning"}
    index = read_gldv2(str(gldv2), "index", check_files=True)
    assert index.ids() == ["1230004"] and not index.labelled
    assert read_gldv2(gldv2, "test").ids() == ["9990005", "9990006"]


def test_bad_landmark_id_names_file_and_line(gldv2):
    write(gldv2 / "train.csv", "id,url,landmark_id\nabc0001,,5\nabd0002,,five\n")
    with pytest.raises(DatasetError) as info:
        read_gldv2(gldv2, "train")
    assert "train.csv, line 3" in str(info.value) and "'five'" in str(info.value)


def test_missing_column(gldv2):
    write(gldv2 / "train.csv", "id,url\nabc0001,\n")
    with pytest.raises(DatasetError, match=r"train\.csv: missing column\(s\) landmark_id"):
        read_gldv2(gldv2, "train")
    write(gldv2 / "test.csv", "image\n9990005\n")
    with pytest.raises(DatasetError, match="missing column"):
        read_gldv2(gldv2, "test")


def test_short_row_and_empty_csv(gldv2):
    write(gldv2 / "train.csv", "id,url,landmark_id\nabc0001,,5\nabd0002\n")
    with pytest.raises(DatasetError, match="line 3: expected at least 3 columns"):
        read_gldv2(gldv2, "train")
    write(gldv2 / "index.csv", "")
    with pytest.raises(DatasetError, match="empty file"):
        read_gldv2(gldv2, "index")


def test_check_files_lists_missing_photos(gldv2):
    for i in ("abc0001", "fff0003"):
        gldv2_image_path(gldv2, "train", i).unlink()
    assert len(read_gldv2(gldv2, "train")) == 3  # no file checks unless asked
    with pytest.raises(DatasetError) as info:
        read_gldv2(gldv2, "train", check_files=True)
    msg = str(info.value)
    assert "2 of 3 photos" in msg and "abc0001.jpg" in msg and "fff0003.jpg" in msg and "abd0002" not in msg


def test_unknown_split_and_missing_csv(gldv2):
    with pytest.raises(DatasetError, match="unknown GLDv2 split 'val'"):
        read_gldv2(gldv2, "val")
    (gldv2 / "index.csv").unlink()
    with pytest.raises(DatasetError, match=r"index\.csv: file not found"):
        read_gldv2(gldv2, "index")


def test_is_gldv2(gldv2, tmp_path):
    assert is_gldv2(gldv2) and is_gldv2(str(gldv2))
    plain = tmp_path / "plain"
    touch(plain, "a/x.jpg")
    write(plain / "test.csv", "id\n")  # a csv without its folder is not the layout
    assert not is_gldv2(plain) and not is_gldv2(tmp_path / "missing")


def test_read_dataset_dispatch(gldv2, tmp_path):
    assert read_dataset(gldv2).name == "train" and read_dataset(gldv2).labelled
    assert read_dataset(gldv2, "index").ids() == ["1230004"]
    folder = tmp_path / "folder"
    touch(folder, "paris/a.jpg")
    assert read_dataset(folder).label_names == {0: "paris"}
    with pytest.raises(DatasetError, match="no split 'index'"):
        read_dataset(folder, "index")


def test_solution_drops_ignored_rows(tmp_path):
    write(
        tmp_path / "recognition_solution.csv", "id,landmarks,Usage\na,5,Public\nb,,Private\nc,7 9,Public\nd,3,Ignored\n"
    )
    write(
        tmp_path / "retrieval_solution.csv",
        "id,images,Usage\na,i1 i2,Public\nb,None,Ignored\nc,i3,Private\nd,i4,Ignored\n",
    )
    s = read_gldv2_solution(tmp_path)
    assert s.recognition == {"a": 5, "b": None, "c": 7}
    assert s.recognition_all == {"a": {5}, "b": set(), "c": {7, 9}}
    assert s.retrieval == {"a": ["i1", "i2"], "c": ["i3"]}
    assert s.usage == {"a": "Public", "b": "Private", "c": "Public"}


def test_solution_files_are_optional_and_checked(tmp_path):
    s = read_gldv2_solution(tmp_path)
    assert (s.recognition, s.recognition_all, s.retrieval, s.usage) == ({}, {}, {}, {})
    write(tmp_path / "recognition_solution.csv", "id,landmarks,Usage\na,5,Public\nb,5 x,Public\n")
    with pytest.raises(DatasetError, match=r"recognition_solution\.csv, line 3: bad landmarks 'x'"):
        read_gldv2_solution(tmp_path)


# -- command-line photos and manifests -------------------------------------------------------


def test_read_photos_mixes_files_and_folders(tmp_path):
    touch(tmp_path, "one/x.jpg", "many/1.jpg", "many/sub/2.png", "many/skip.txt")
    m = read_photos([tmp_path / "one" / "x.jpg", str(tmp_path / "many")])
    assert [(r.id, r.path) for r in m] == [
        ("x", tmp_path / "one/x.jpg"),
        ("1.jpg", tmp_path / "many/1.jpg"),
        ("sub/2.png", tmp_path / "many/sub/2.png"),
    ]
    assert not m.labelled and m.root == tmp_path


def test_read_photos_keeps_ids_unique(tmp_path):
    touch(tmp_path, "a/x.jpg", "b/x.png")
    first, second = tmp_path / "a/x.jpg", tmp_path / "b/x.png"
    m = read_photos([first, second, first])
    assert m.ids() == ["x", second.as_posix()]  # a taken id falls back to the path; repeats read once


def test_read_photos_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file or directory"):
        read_photos([tmp_path / "nope.jpg"])
    with pytest.raises(DatasetError, match="nope.jpg, .*gone.jpg: no such file or directory"):
        read_photos([tmp_path / "nope.jpg", tmp_path / "gone.jpg"])
    # among photos that exist, a missing one is a record whose reading fails (for it alone)
    touch(tmp_path, "x.jpg")
    assert read_photos([tmp_path / "nope.jpg", tmp_path / "x.jpg"]).ids() == ["nope", "x"]
    with pytest.raises(DatasetError, match="no photos given"):
        read_photos([])


def test_manifest_access_and_subset(tmp_path):
    records = [ImageRecord(i, tmp_path / f"{i}.jpg", lab) for i, lab in [("a", 1), ("b", None), ("c", 2)]]
    m = Manifest("db", tmp_path, records, {1: "one", 2: "two"})
    assert len(m) == 3 and m[1].id == "b" and list(m) == records and m.labelled
    sub = m.subset(["c", "a"])
    assert sub.ids() == ["a", "c"] and sub.label_names == m.label_names and sub.name == "db"
    assert m.subset(lambda r: r.landmark_id is None).ids() == ["b"]
    assert not m.subset(["b"]).labelled
    with pytest.raises(DatasetError, match="1 unknown id"):
        m.subset(["a", "zz"])
    with pytest.raises(DatasetError) as info:
        m.subset([f"x{i:02d}" for i in range(12)])
    msg = str(info.value)
    assert "12 unknown" in msg and "x09" in msg and "x10" not in msg and "... and 2 more" in msg
    with pytest.raises(TypeError):
        m.subset("a")


# -- gldv2-mini ------------------------------------------------------------------------------


def test_gldv2_mini(gldv2_root):
    assert is_gldv2(gldv2_root)
    train = read_gldv2(gldv2_root, "train")
    assert len(train) == 1012 and all(r.landmark_id is not None for r in train)
    assert len({r.landmark_id for r in train}) == 18
    assert len(train.label_names) == 18 and train.label_names[47378] == "Eiffel_Tower"
    assert all(r.path.is_file() for r in train.records[::25])
    index = read_gldv2(gldv2_root, "index", check_files=True)
    assert len(index) == 1188 and not index.labelled  # 1,189 rows, one id repeated
    test = read_gldv2(gldv2_root, "test", check_files=True)
    assert len(test) == 745 and len(set(test.ids())) == 745


def test_gldv2_mini_solution(gldv2_root):
    s = read_gldv2_solution(gldv2_root)
    test_ids = set(read_gldv2(gldv2_root, "test").ids())
    assert len(s.recognition) == 745 and set(s.recognition) == test_ids
    assert sum(v is not None for v in s.recognition.values()) == 274
    assert len(s.retrieval) == 274
    assert {q for q, v in s.recognition.items() if v is not None} == set(s.retrieval)
    index_ids = set(read_gldv2(gldv2_root, "index").ids())
    assert all(set(v) <= index_ids for v in s.retrieval.values())


def test_repeated_gldv2_ids_keep_the_first_row(tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / "index.csv").write_text("id\nabc123\ndef456\nabc123\n")
    manifest = read_gldv2(tmp_path, "index")
    assert manifest.ids() == ["abc123", "def456"]


def test_solution_restricted_to_the_listed_queries(tmp_path):
    (tmp_path / "recognition_solution.csv").write_text(
        "id,landmarks,Usage\naaa1,7,Public\nbbb2,,Private\nccc3,9 8,Public\n"
    )
    (tmp_path / "retrieval_solution.csv").write_text("id,images,Usage\naaa1,x1 x2,Public\nccc3,x3,Public\n")
    sol = read_gldv2_solution(tmp_path).restricted(["aaa1", "bbb2"])
    assert sol.recognition == {"aaa1": 7, "bbb2": None}
    assert sol.recognition_all == {"aaa1": {7}, "bbb2": set()}
    assert sol.retrieval == {"aaa1": ["x1", "x2"]} and set(sol.usage) == {"aaa1", "bbb2"}
