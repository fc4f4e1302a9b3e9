"""Local features on real photos: RootSIFT properties, keypoint cap, frame scaling, bad photos skipped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from landmark.config import LocalConfig
from landmark.features.local import LocalExtractor, extract_many, rootsift


@dataclass
class Item:
    id: str
    path: Path


def _photo(root: Path, split: str, image_id: str) -> Path:
    return root / split / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _first_ids(root: Path, landmark: str, n: int) -> list[str]:
    rows = (root / "train.csv").read_text().splitlines()[1:]
    return [r.split(",")[0] for r in rows if r.split(",")[2] == landmark][:n]


def test_rootsift_is_unit_norm_and_hellinger():
    d = np.random.default_rng(0).integers(0, 200, size=(5, 128)).astype(np.uint8)
    r = rootsift(d)
    assert np.allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-5)
    # RootSIFT dot product = Hellinger kernel of the L1-normalised SIFT vectors
    p = d.astype(np.float64) / d.sum(axis=1, keepdims=True)
    assert np.allclose(r[0] @ r[1], np.sqrt(p[0] * p[1]).sum(), atol=1e-5)


def test_sift_on_a_full_resolution_photo_respects_size_and_cap(gldv2_root):
    path = _photo(gldv2_root, "train", _first_ids(gldv2_root, "900001", 1)[0])
    f = LocalExtractor(LocalConfig(image_size=512, max_keypoints=300, num_workers=0)).extract_path(path)
    assert 100 < len(f) <= 300
    assert max(f.width, f.height) == 512 and f.scale < 1.0
    assert f.keypoints.dtype == np.float16 and f.descriptors.dtype == np.uint8 and f.descriptors.shape[1] == 128
    assert (f.xy[:, 0] <= f.width).all() and (f.xy[:, 1] <= f.height).all() and (f.xy >= 0).all()


def test_orb_binary_descriptors(gldv2_root):
    path = _photo(gldv2_root, "train", _first_ids(gldv2_root, "900001", 1)[0])
    f = LocalExtractor(LocalConfig(kind="orb", image_size=512, max_keypoints=200, num_workers=0)).extract_path(path)
    assert 0 < len(f) <= 200 and f.descriptors.shape[1] == 32 and f.descriptors.dtype == np.uint8


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown local feature kind"):
        LocalExtractor(LocalConfig(kind="surf"))


def test_parallel_extraction_skips_a_bad_photo(gldv2_root, tmp_path):
    ids = _first_ids(gldv2_root, "47378", 9)
    items = [Item(i, _photo(gldv2_root, "train", i)) for i in ids]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    items.insert(3, Item("broken", bad))
    got: dict[str, object] = {}
    failures = extract_many(
        LocalExtractor(LocalConfig(image_size=256, max_keypoints=100, num_workers=2)),
        items,
        lambda keys, feats: got.update(zip(keys, feats)),
        chunk=4,
        progress=False,
    )
    assert [f.id for f in failures] == ["broken"] and "broken.jpg" in failures[0].path
    assert set(got) == set(ids)
    serial = LocalExtractor(LocalConfig(image_size=256, max_keypoints=100, num_workers=0)).extract_path(items[0].path)
    assert np.array_equal(got[ids[0]].descriptors, serial.descriptors)  # workers compute the same thing
