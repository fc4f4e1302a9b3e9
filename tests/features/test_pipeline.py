from pathlib import Path

import numpy as np
import pytest
import torch

from landmark.config import load_config
from landmark.features.extract import ExtractionResult, Failure
from landmark.features.pipeline import EnsembleExtractor, WhitenedExtractor, build_extractor, learn_store_whitening
from landmark.features.whitening import WhiteningError, l2n, learn_whitening
from landmark.index import SignatureMismatch, Store
from landmark.index.store import check_signature


class Fake:
    """A stand-in GlobalExtractor: a fixed random unit vector per id; 'bad' ids fail."""

    def __init__(self, dim, seed, name="fake"):
        self.dim, self.seed, self.device = dim, seed, torch.device("cpu")
        self.model_cfg = type("M", (), {"backbone": name})()
        self.cfg = None

    @property
    def signature(self):
        return {"model": {"backbone": self.model_cfg.backbone}, "dim": self.dim}

    def vec(self, key):
        rng = np.random.default_rng(abs(hash((key, self.seed))) % 2**32)
        return l2n(rng.normal(size=(1, self.dim)))[0]

    def extract(self, items, **kw):
        ok = [it.id for it in items if "bad" not in it.id]
        return ExtractionResult(
            ok,
            np.stack([self.vec(i) for i in ok]) if ok else np.zeros((0, self.dim), np.float32),
            [Failure(it.id, str(it.path), "unreadable") for it in items if "bad" in it.id],
        )

    def extract_images(self, images):
        return np.stack([self.vec(str(i)) for i in range(len(images))])


class Item:
    def __init__(self, i):
        self.id, self.path = i, Path(f"/x/{i}.jpg")


def test_ensemble_concatenates_unit_parts_and_drops_failures():
    a, b = Fake(4, 0, "a"), Fake(6, 1, "b")
    ens = EnsembleExtractor([a, b])
    res = ens.extract([Item("p"), Item("bad1"), Item("q")])
    assert res.ids == ["p", "q"] and res.vectors.shape == (2, 10)
    assert np.allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-6)
    assert np.allclose(res.vectors[0, :4] * np.sqrt(2), a.vec("p"), atol=1e-6)
    assert [f.id for f in res.failures] == ["bad1"]
    assert ens.signature["dim"] == 10 and [s["model"]["backbone"] for s in ens.signature["ensemble"]] == ["a", "b"]
    with pytest.raises(ValueError):
        EnsembleExtractor([a])


def test_whitened_extractor_signature_and_store_refusal(tmp_path):
    base = Fake(16, 0)
    items = [Item(f"i{n}") for n in range(60)]
    cfg = load_config(overrides=["whitening.kind=pca", "whitening.dim=8"])
    w = learn_store_whitening(cfg, base, items, tmp_path)
    assert (tmp_path / "whitening.npz").is_file() and w.out_dim == 8
    ex = WhitenedExtractor(base, w)
    assert ex.dim == 8 and ex.signature["whitening"]["digest"] == w.digest
    res = ex.extract(items[:3])
    assert res.vectors.shape == (3, 8) and np.allclose(res.vectors, w.apply(base.extract(items[:3]).vectors))
    store = Store.create(tmp_path / "s", cfg, ex.signature)
    check_signature(store, ex.signature)
    other = WhitenedExtractor(base, learn_whitening(base.extract(items[:30]).vectors, 8))
    with pytest.raises(SignatureMismatch, match="whitening"):
        check_signature(store, other.signature)
    with pytest.raises(SignatureMismatch):
        check_signature(store, base.signature)  # un-whitened queries are refused too


def test_build_extractor_needs_the_learned_file(tmp_path):
    cfg = load_config(overrides=["whitening.kind=pca", "model.backbone=tf_efficientnet_lite0"])
    with pytest.raises(WhiteningError, match="whitening.npz"):
        build_extractor(cfg, device="cpu", store_root=tmp_path)
    # the single-model default keeps the plain extractor and its old signature
    plain = build_extractor(load_config(overrides=["model.backbone=tf_efficientnet_lite0"]), device="cpu")
    assert "whitening" not in plain.signature and "ensemble" not in plain.signature


def test_presets_for_ensemble_and_whitening():
    cfg = load_config("ensemble-gem-pcaw")
    assert [m.backbone for m in cfg.ensemble] == ["tf_efficientnet_lite1", "mobilenet_v2"]
    assert cfg.whitening.kind == "pca"
    assert load_config("lite2-gem-pcaw").whitening.kind == "pca"
    assert load_config().ensemble == () and load_config().whitening.kind == "auto"
    assert load_config("lite2-gem-nopca").whitening.kind == "none"


def test_auto_whitening_is_pca_only_where_the_store_learned_one(tmp_path):
    from landmark.features.pipeline import WHITENING_FILE, auto_learns_pca, whitening_in_force
    from landmark.features.whitening import learn_whitening

    cfg = load_config()  # auto, dim 256
    assert not auto_learns_pca(cfg, 256) and auto_learns_pca(cfg, 257)
    assert whitening_in_force(cfg, None) == "none" and whitening_in_force(cfg, tmp_path) == "none"
    learn_whitening(np.random.default_rng(0).normal(size=(20, 8)), 4, power=0.0).save(tmp_path / WHITENING_FILE)
    assert whitening_in_force(cfg, tmp_path) == "pca"
    assert whitening_in_force(load_config("lite2-gem-nopca"), tmp_path) == "none"


class RegionFake(Fake):
    """A Fake that also returns 3 regional descriptors per photo when asked for regions."""

    def regions(self, key):
        rng = np.random.default_rng(abs(hash((key, self.seed, "r"))) % 2**32)
        return l2n(rng.normal(size=(3, self.dim)))

    def extract(self, items, regions=1, **kw):
        res = super().extract(items)
        if regions > 1:
            res.extras["regions"] = np.stack([self.regions(i) for i in res.ids]).astype(np.float32)
        return res

    def extract_images_with_probe(self, images, regions=1):
        extras = {"regions": np.stack([self.regions(str(i)) for i in range(len(images))])} if regions > 1 else {}
        return self.extract_images(images), extras


def test_regions_are_combined_like_the_descriptors():
    a, b = RegionFake(4, 0, "a"), RegionFake(6, 1, "b")
    ens = EnsembleExtractor([a, b])
    res = ens.extract([Item("p"), Item("bad1"), Item("q")], regions=3)
    r = res.extras["regions"]
    r = r.astype(np.float32)  # regions are kept in float16
    assert r.shape == (2, 3, 10) and np.allclose(np.linalg.norm(r, axis=2), 1.0, atol=2e-3)
    assert np.allclose(r[1, 2, 4:] * np.sqrt(2), b.regions("q")[2], atol=2e-3)
    assert "regions" not in ens.extract([Item("p")]).extras
    _, extras = ens.extract_images_with_probe([object(), object()], regions=3)
    assert extras["regions"].shape == (2, 3, 10)

    items = [Item(f"i{n}") for n in range(40)]
    w = learn_whitening(a.extract(items).vectors, 3)
    white = WhitenedExtractor(a, w)
    res = white.extract(items[:2], regions=3)
    assert res.extras["regions"].shape == (2, 3, 3)
    assert np.allclose(
        res.extras["regions"][1], w.apply(a.regions("i1")), atol=1e-6
    )  # the fake's float64 in, float32 out


def test_zoom_views_follow_the_regions_and_repeat_the_global_descriptor_where_the_zoomed_read_failed():
    from landmark.features.pipeline import zoom_views

    e = np.eye(6, dtype=np.float32)
    vectors, regions = e[[0, 1]], np.stack([e[[2, 3]], e[[3, 2]]])  # 2 photos x 2 regions
    zoom_vectors, zoom_regions = e[[4]], e[[5, 5]][None]  # only "b" was read zoomed
    out = zoom_views(["a", "b"], vectors, regions, ["b"], zoom_vectors, zoom_regions)
    assert out.shape == (2, 2 + 1 + 2, 6) and out.dtype == np.float16
    assert np.array_equal(out[:, :2], regions)  # the base regions first
    assert np.array_equal(out[1, 2], e[4]) and np.array_equal(out[1, 3:], e[[5, 5]])  # then the zoomed read
    assert np.array_equal(out[0, 2:], e[[0, 0, 0]])  # "a": its global descriptor again
    no_regions = zoom_views(["a", "b"], vectors, None, ["a", "b"], e[[4, 5]], None)
    assert no_regions.shape == (2, 1, 6) and np.array_equal(no_regions[:, 0], e[[4, 5]])
    # a zoomed read that read nothing (its extras then hold an empty 2-d array) adds the global descriptors
    empty = zoom_views(["a", "b"], vectors, regions, [], np.zeros((0, 6), np.float32), np.zeros((0, 0), np.float16))
    assert empty.shape == (2, 5, 6) and np.array_equal(empty[:, 2:], np.repeat(vectors[:, None], 3, axis=1))


def test_a_zoomed_extractor_reads_larger_photos_with_the_same_network_and_no_probe():
    from landmark.features.extract import GlobalExtractor
    from landmark.features.pipeline import zoomed
    from landmark.models import build_model

    cfg = load_config(
        overrides=["model.backbone=tf_efficientnet_lite0", "extract.image_size=224", "extract.batch_size=8"]
    )
    base = GlobalExtractor(build_model(cfg.model, pretrained=False), cfg.extract, cfg.model, device="cpu")
    base.set_probe("p", lambda x: x)
    params = {k: v.data_ptr() for k, v in base.net.state_dict().items()}
    big = zoomed(base, 2.0)
    assert big.net is base.net and {k: v.data_ptr() for k, v in base.net.state_dict().items()} == params
    assert (big.cfg.image_size, big.cfg.batch_size, big.probe) == (448, 2, None)
    assert (base.cfg.image_size, base.cfg.batch_size, base.probe_name) == (224, 8, "p")  # the original is untouched
    assert max(big.target_shape(640, 480)) == 448 and max(base.target_shape(640, 480)) == 224


def test_learned_store_whitening_uses_only_the_labelled_photos_asked_for(tmp_path):
    from landmark.features.whitening import Whitening, learn_labelled_whitening

    class Cached(Fake):
        def extract(self, items, **kw):  # a resumable cache can hold photos of an earlier run
            stale = [Item("stale1"), Item("stale2")]
            return super().extract([*items, *stale], **kw)

    class Labelled(Item):
        def __init__(self, i, label):
            super().__init__(i)
            self.landmark_id = label

    base = Cached(16, 0)
    items = [Labelled(f"i{n}", n % 3) for n in range(30)] + [Labelled("u", None)]
    cfg = load_config(overrides=["whitening.kind=learned", "whitening.dim=4", "whitening.shrinkage=0.1"])
    w = learn_store_whitening(cfg, base, items, tmp_path, held_out=["i1", "i0"])
    rest = [f"i{n}" for n in range(2, 30)]
    expected = learn_labelled_whitening(np.stack([base.vec(i) for i in rest]), np.arange(2, 30) % 3, 4, shrinkage=0.1)
    assert np.allclose(w.projection, expected.projection) and np.allclose(w.mean, expected.mean)
    assert w.held_out == ("i0", "i1") and Whitening.load(tmp_path / "whitening.npz").digest == w.digest
