"""DELF extraction: keypoints ordered by attention, receptive-field centres in the extraction frame, the PCA
round trip, the stored byte encoding, and verification of a photo with its warped copy.

The attention head here is *randomly initialised* (seeded) on the real ImageNet MobileNetV2 trunk, and
the PCA is learned on other real photos' features: selection and descriptors are then a fixed function
of the photo, which is what covariance under a warp needs; what training adds (attention on landmarks
rather than clutter) is measured by the quality suite, not here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from landmark.config import ConfigError, LocalConfig, load_config
from landmark.data import load_image
from landmark.features.delf import (
    DelfExtractor,
    cell_centres,
    decode_descriptors,
    encode_descriptors,
    frame_of,
    pca_project,
    pca_reconstruct,
    pca_state,
)
from landmark.features.local import LocalExtractor
from landmark.features.whitening import l2n, learn_whitening
from landmark.models.delf import DelfCheckpoint, DelfCheckpointError, DelfHead, save_delf
from landmark.retrieval.matching import match_pair, prepare
from landmark.retrieval.verification import verify


def _photo(root: Path, split: str, image_id: str) -> Path:
    return root / split / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _train_ids(root: Path, landmark: str) -> list[str]:
    rows = (root / "train.csv").read_text().splitlines()[1:]
    return [r.split(",")[0] for r in rows if r.split(",")[2] == landmark]


def test_pca_round_trips_and_reduces_to_the_leading_components():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 24)) @ rng.normal(size=(24, 24)) + 3.0
    full = learn_whitening(x, 24, power=0.0)
    assert np.allclose(pca_reconstruct(full, pca_project(full, x)), x, atol=1e-4)
    white = learn_whitening(x, 24, power=1.0)  # whitened: unit variance per component, still invertible
    y = pca_project(white, x)
    assert np.allclose(y.var(axis=0), 1.0, atol=1e-3)
    assert np.allclose(pca_reconstruct(white, y), x, atol=1e-3)
    low = learn_whitening(x, 8, power=0.0)  # reduced: the error is the variance of the dropped components
    err = ((pca_reconstruct(low, pca_project(low, x)) - x) ** 2).sum(axis=1).mean()
    assert np.isclose(err, full.eigenvalues[8:].sum(), rtol=1e-3)


def test_stored_bytes_are_the_int8_values_matching_uses():
    d = l2n(np.random.default_rng(1).normal(size=(50, 64)))
    u8 = encode_descriptors(d)
    assert u8.dtype == np.uint8 and np.abs(decode_descriptors(u8) - d).max() <= 0.5 / 250 + 1e-6
    q = prepare(u8, "delf").mat.numpy()
    assert np.array_equal(q.astype(np.int16), u8.astype(np.int16) - 128)
    assert np.array_equal(q, np.clip(np.rint(d * 250), -127, 127).astype(np.int8))


def test_cell_centres_map_back_to_the_frame():
    # a 40 x 60 frame at pyramid scale 0.5 is a 20 x 30 level; a 5 x 5 map of it (stride ~4/6): cells of 8 x 12 frame px
    x, y = cell_centres(5, 5, 30, 20, 0.5)
    assert np.allclose(np.unique(x), np.arange(5) * 12 + 6 - 0.5)
    assert np.allclose(np.unique(y), np.arange(5) * 8 + 4 - 0.5)


def test_frame_is_never_upscaled():
    img = Image.new("RGB", (300, 200))
    assert frame_of(img, 1024)[0].size == (300, 200) and frame_of(img, 1024)[1] == 1.0
    small, s = frame_of(img, 150)
    assert small.size == (150, 100) and s == 0.5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, gldv2_root) -> Path:
    """A random (seeded) attention head on ImageNet MobileNetV2, the PCA learned on two other landmarks' photos."""
    torch.manual_seed(0)
    head = DelfHead(96, 4, 32)
    ckpt = DelfCheckpoint("mobilenet_v2", 14, head.state_dict(), 96, 4, 32, {}, (0.5, 0.7071, 1.0))
    net = ckpt.build().eval()
    mean, std = torch.tensor(net.backbone.preprocessing.mean), torch.tensor(net.backbone.preprocessing.std)
    feats = []
    for lm in ("900001", "900005"):
        for i in _train_ids(gldv2_root, lm)[:3]:
            img = load_image(_photo(gldv2_root, "train", i)).convert("RGB").resize((320, 320))
            x = (torch.from_numpy(np.asarray(img, np.float32) / 255) - mean) / std
            with torch.no_grad():
                feats.append(net.features(x.permute(2, 0, 1)[None])[0].flatten(1).T.numpy())
    ckpt.pca = pca_state(learn_whitening(l2n(np.concatenate(feats)), 40, power=1.0))
    path = tmp_path_factory.mktemp("delf") / "delf.pt"
    save_delf(path, ckpt)
    return path


@pytest.fixture(scope="module")
def photo(gldv2_root) -> Image.Image:
    img = load_image(_photo(gldv2_root, "train", _train_ids(gldv2_root, "900003")[0]))
    w, h = img.size
    s = 512 / max(w, h)
    return img.resize((round(w * s), round(h * s)), Image.BILINEAR)


def _cfg(checkpoint: Path, **kw) -> LocalConfig:
    return LocalConfig(
        kind="delf",
        checkpoint=str(checkpoint),
        image_size=kw.pop("image_size", 512),
        max_keypoints=kw.pop("max_keypoints", 500),
        num_workers=0,
        **kw,
    )


@pytest.mark.slow
def test_keypoints_are_the_highest_attention_ones_in_order(checkpoint, photo):
    ex = DelfExtractor(_cfg(checkpoint, max_keypoints=200))
    feats, scores = ex.extract_with_scores(photo)
    assert len(feats) == 200 and len(scores) == 200
    assert np.all(np.diff(scores) <= 0)  # highest attention first
    every = np.concatenate([c.scores for c in ex.candidates(frame_of(photo, 512)[0])])
    assert scores[-1] >= np.sort(every)[-200]  # none left out scored higher
    w, h = feats.width, feats.height
    xy = feats.xy
    assert (xy[:, 0] >= 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] >= 0).all() and (xy[:, 1] < h).all()
    assert feats.descriptors.shape == (200, 40) and feats.descriptors.dtype == np.uint8
    norms = np.linalg.norm(decode_descriptors(feats.descriptors), axis=1)  # unit, but for rare clipped components
    assert abs(np.median(norms) - 1.0) < 0.005 and norms.min() > 0.9


@pytest.mark.slow
def test_local_extractor_makes_delf_with_a_signature_naming_the_checkpoint(checkpoint, photo):
    ex = LocalExtractor(_cfg(checkpoint))
    sig = ex.signature
    assert sig["kind"] == "delf" and sig["checkpoint"] == str(checkpoint.resolve()) and len(sig["digest"]) == 16
    f = ex.extract_image(photo)
    assert 0 < len(f) <= 500 and f.descriptors.shape[1] == 40


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(DelfCheckpointError, match="does not exist"):
        LocalExtractor(LocalConfig(kind="delf", checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(ConfigError, match=r"local\.checkpoint"):
        load_config(overrides=["local.kind=delf"])


def _inliers(a, b, threshold: float) -> int:
    m = match_pair(prepare(a.descriptors, "delf"), prepare(b.descriptors, "delf"), ratio=1.0)
    return verify(a.xy, b.xy, m, model="homography", threshold=threshold, max_iters=2000).inliers


@pytest.mark.slow
def test_a_photo_and_its_warped_copy_verify_unrelated_photos_do_not(checkpoint, photo, gldv2_root):
    ex = DelfExtractor(_cfg(checkpoint))
    w, h = photo.size
    H = np.array([[0.9, 0.1, 20.0], [-0.08, 0.95, 30.0], [1e-4, 5e-5, 1.0]])
    warped = Image.fromarray(cv2.warpPerspective(np.asarray(photo.convert("RGB")), H, (w, h)))
    a, b = ex.extract_image(photo), ex.extract_image(warped)
    other = ex.extract_image(load_image(_photo(gldv2_root, "train", _train_ids(gldv2_root, "900005")[0])))
    same = _inliers(a, b, threshold=16.0)
    unrelated = _inliers(a, other, threshold=16.0)
    print(f"warped copy: {same} inliers, unrelated: {unrelated}")
    assert same >= 60
    assert unrelated < 20 and same > 4 * unrelated
