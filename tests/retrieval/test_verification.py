"""Geometric verification on real photos: a known homography is recovered; unrelated photos barely match."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from landmark.config import LocalConfig
from landmark.data import load_image
from landmark.features.local import LocalExtractor
from landmark.retrieval.matching import match_pair, prepare
from landmark.retrieval.verification import draw_matches, verify

CFG = LocalConfig(image_size=640, max_keypoints=1000, num_workers=0)


def _photo(root, split, image_id):
    return root / split / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _train_ids(root, landmark):
    rows = (root / "train.csv").read_text().splitlines()[1:]
    return [r.split(",")[0] for r in rows if r.split(",")[2] == landmark]


@pytest.fixture(scope="module")
def photo(gldv2_root):
    img = load_image(_photo(gldv2_root, "train", _train_ids(gldv2_root, "900003")[0]))
    w, h = img.size
    s = 640 / max(w, h)
    return img.resize((round(w * s), round(h * s)), Image.BILINEAR)


def test_known_homography_is_recovered_from_a_warped_photo(photo):
    w, h = photo.size
    H = np.array([[0.9, 0.12, 25.0], [-0.08, 0.95, 40.0], [2e-4, 1e-4, 1.0]])
    warped = Image.fromarray(cv2.warpPerspective(np.asarray(photo), H, (w, h)))
    ex = LocalExtractor(CFG)
    a, b = ex.extract_image(photo), ex.extract_image(warped)
    m = match_pair(prepare(a.descriptors), prepare(b.descriptors), ratio=0.85)
    v = verify(a.xy, b.xy, m, model="homography", threshold=3.0, max_iters=2000)
    assert v.inliers >= 100 and v.ratio > 0.6
    # the fitted model maps points like the true one (within a few pixels inside the photo)
    grid = np.array([[x, y, 1.0] for x in np.linspace(50, w - 50, 5) for y in np.linspace(50, h - 50, 5)])

    def apply(M):
        p = grid @ M.T
        return p[:, :2] / p[:, 2:]

    assert np.abs(apply(v.model / v.model[2, 2]) - apply(H)).max() < 3.0
    assert v.mask.sum() == v.inliers and len(v.mask) == len(m)


def test_unrelated_photos_yield_few_inliers(gldv2_root):
    ex = LocalExtractor(CFG)
    same = [ex.extract_path(_photo(gldv2_root, "train", i)) for i in _train_ids(gldv2_root, "900001")[:2]]
    other = ex.extract_path(_photo(gldv2_root, "train", _train_ids(gldv2_root, "900005")[0]))

    def inliers(x, y):
        return verify(x.xy, y.xy, match_pair(prepare(x.descriptors), prepare(y.descriptors), ratio=0.9)).inliers

    unrelated = inliers(same[0], other)
    assert unrelated < 12
    assert inliers(same[0], same[1]) > unrelated


def test_hopeless_pairs_exit_early_and_models_are_checked():
    xy = np.random.default_rng(0).uniform(0, 100, (20, 2)).astype(np.float32)
    few = np.array([[0, 0], [1, 1], [2, 2]])
    v = verify(xy, xy, few, min_inliers=12)
    assert v.inliers == 0 and v.matches == 3 and v.model is None
    with pytest.raises(ValueError, match="unknown verification model"):
        verify(xy, xy, few, model="similarity")


@pytest.mark.parametrize("model", ["fundamental", "affine"])
def test_other_models_verify_an_identity_pair(photo, model):
    a = LocalExtractor(CFG).extract_image(photo)
    m = match_pair(prepare(a.descriptors), prepare(a.descriptors))
    v = verify(a.xy, a.xy, m, model=model, threshold=2.0)
    assert v.inliers > 0.9 * len(m)


def test_draw_matches_is_a_png_of_both_photos(photo):
    a = LocalExtractor(CFG).extract_image(photo)
    m = match_pair(prepare(a.descriptors), prepare(a.descriptors))
    mask = np.zeros(len(m), bool)
    mask[:10] = True
    png = draw_matches(photo, photo, a, a, m, mask, height=200)
    img = Image.open(io.BytesIO(png))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and img.height == 200
    assert abs(img.width - 2 * round(photo.width * 200 / photo.height)) <= 2


def test_affine_rootsift_matches_a_grazing_view_that_rootsift_loses(photo):
    w, h = photo.size
    # the photo squeezed to a third of its width (a view at about 70 degrees) and rotated by 30 degrees
    A = cv2.getRotationMatrix2D((w / 2, h / 2), 30, 1.0) @ np.array([[1 / 3, 0, w / 3], [0, 1, 0], [0, 0, 1]])
    grazing = Image.fromarray(cv2.warpAffine(np.asarray(photo), A, (w, h)))
    inliers = {}
    for kind in ("rootsift", "affine_rootsift"):
        ex = LocalExtractor(LocalConfig(kind=kind, image_size=640, max_keypoints=1000, num_workers=0))
        a, b = ex.extract_image(photo), ex.extract_image(grazing)
        assert b.descriptors.shape[1] == 128 and len(b) <= 1000
        m = match_pair(prepare(a.descriptors), prepare(b.descriptors), ratio=0.85)
        inliers[kind] = verify(a.xy, b.xy, m, model="homography", threshold=4.0, max_iters=2000).inliers
    assert inliers["affine_rootsift"] >= 60 and inliers["affine_rootsift"] >= 3 * inliers["rootsift"]
