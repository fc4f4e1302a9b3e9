import pytest

from landmark.evaluation import read_recognition_csv, read_retrieval_csv, write_recognition_csv, write_retrieval_csv
from landmark.utils.io import atomic_path, atomic_write_text


def test_recognition_round_trip(tmp_path):
    p = tmp_path / "rec.csv"
    write_recognition_csv(p, {"a": (47378, 0.123456789), "b": None}, ids=["b", "a", "c"])
    lines = p.read_text().splitlines()
    assert lines == ["id,landmarks", "b,", "a,47378 0.123457", "c,"]
    assert read_recognition_csv(p) == {"b": None, "a": (47378, 0.123457), "c": None}


def test_retrieval_round_trip_truncates_to_k(tmp_path):
    p = tmp_path / "ret.csv"
    write_retrieval_csv(p, {"q": [f"i{n}" for n in range(150)], "r": []}, k=100)
    got = read_retrieval_csv(p)
    assert len(got["q"]) == 100 and got["q"][0] == "i0" and got["r"] == []


def test_atomic_write_keeps_old_content_on_error(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]
