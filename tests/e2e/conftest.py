"""A small real store shared by the end-to-end tests: 4 landmarks of gldv2-mini, lite0 at 224 px."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from landmark.config import load_config

LANDMARKS = (47378, 168098, 90396, 55350)  # Eiffel Tower, Golden Gate Bridge, Stonehenge, Sydney Opera House
PER_LANDMARK = 10
FAST = ["model.backbone=tf_efficientnet_lite0", "extract.image_size=224", "extract.num_workers=0"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def mini_gldv2(gldv2_root, tmp_path_factory) -> Path:
    """A GLDv2-layout dataset of a few landmarks: CSVs written here, photos symlinked from gldv2-mini."""
    out = tmp_path_factory.mktemp("mini-gldv2")
    train = [r for r in _rows(gldv2_root / "train.csv") if int(r["landmark_id"]) in LANDMARKS]
    train = [r for lab in LANDMARKS for r in [t for t in train if int(t["landmark_id"]) == lab][:PER_LANDMARK]]
    rec = _rows(gldv2_root / "recognition_solution.csv")
    ret = {r["id"]: r["images"].split() for r in _rows(gldv2_root / "retrieval_solution.csv")}
    landmark_tests = [r for lab in LANDMARKS for r in [x for x in rec if x["landmarks"] == str(lab)][:3]]
    other_tests = [r for r in rec if not r["landmarks"]][:4]
    tests = landmark_tests + other_tests
    index_ids = sorted({i for r in landmark_tests for i in ret[r["id"]][:4]})
    distractors = [r["id"] for r in _rows(gldv2_root / "index.csv") if r["id"] not in set().union(*ret.values())][:6]
    index_ids += distractors

    def link(split: str, image_id: str) -> None:
        rel = Path(split, image_id[0], image_id[1], image_id[2], f"{image_id}.jpg")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(gldv2_root / rel, out / rel)

    with open(out / "train.csv", "w") as fh:
        fh.write("id,url,landmark_id\n" + "".join(f"{r['id']},,{r['landmark_id']}\n" for r in train))
    for r in train:
        link("train", r["id"])
    (out / "index.csv").write_text("id\n" + "".join(f"{i}\n" for i in index_ids))
    for i in index_ids:
        link("index", i)
    (out / "test.csv").write_text("id\n" + "".join(f"{r['id']}\n" for r in tests))
    for r in tests:
        link("test", r["id"])
    (out / "recognition_solution.csv").write_text(
        "id,landmarks,Usage\n" + "".join(f"{r['id']},{r['landmarks']},Public\n" for r in tests)
    )
    keep = set(index_ids)
    (out / "retrieval_solution.csv").write_text(
        "id,images,Usage\n"
        + "".join(f"{r['id']},{' '.join(i for i in ret[r['id']] if i in keep)},Public\n" for r in landmark_tests)
    )
    (out / "label_names.csv").write_text((gldv2_root / "label_names.csv").read_text())
    return out


@pytest.fixture(scope="session")
def fast_overrides() -> list[str]:
    return list(FAST)


@pytest.fixture(scope="session")
def mini_store(mini_gldv2, tmp_path_factory) -> Path:
    from landmark.api import Landmarks

    store = tmp_path_factory.mktemp("store") / "store"
    Landmarks.build(mini_gldv2, store, load_config(overrides=FAST), progress=False)
    return store


@pytest.fixture(scope="session")
def eiffel_query(mini_gldv2) -> Path:
    rec = _rows(mini_gldv2 / "recognition_solution.csv")
    qid = next(r["id"] for r in rec if r["landmarks"] == "47378")
    return mini_gldv2 / "test" / qid[0] / qid[1] / qid[2] / f"{qid}.jpg"
