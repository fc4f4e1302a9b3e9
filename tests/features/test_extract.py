import numpy as np
import pytest
import torch
from PIL import Image

from landmark.config import ExtractConfig, ModelConfig
from landmark.data import ImageRecord
from landmark.features import GlobalExtractor, bucket_batches
from landmark.features.extract import REGIONS_EXTRA
from landmark.models import build_model
from landmark.models import functional as LF

LITE0 = ModelConfig(backbone="tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def extractor():
    cfg = ExtractConfig(image_size=128, batch_size=4, num_workers=0, device="cpu")
    return GlobalExtractor(build_model(LITE0), cfg, LITE0)


def photos(tmp_path, n=6, sizes=((200, 150), (150, 200), (300, 225))):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        p = tmp_path / f"p{i}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        items.append(ImageRecord(f"p{i}", p))
    return items


def test_bucket_batches_group_equal_shapes():
    shapes = [(1, 2), (2, 1), (1, 2), (1, 2), (2, 1), (1, 2)]
    batches = bucket_batches(shapes, 2)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) <= 2 and len({shapes[i] for i in b}) == 1


def test_batched_equals_one_by_one(extractor, tmp_path):
    items = photos(tmp_path)
    res = extractor.extract(items, progress=False)
    assert res.ids == [it.id for it in items]  # input order kept across buckets
    assert res.vectors.shape == (6, extractor.dim) and res.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(res.vectors, axis=1), 1, atol=1e-5)
    singles = np.concatenate([extractor.extract([it], progress=False).vectors for it in items])
    assert np.allclose(res.vectors, singles, atol=1e-4)
    # in-memory images give the same descriptors as files (same decode/resize path)
    mem = extractor.extract_images([Image.open(it.path) for it in items[:2]])
    assert np.allclose(mem, res.vectors[:2], atol=1e-4)
    assert res.sizes["p1"] == (150, 200)


def test_bad_photos_are_reported_and_skipped(extractor, tmp_path):
    items = photos(tmp_path, n=3)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a photo")
    good = (tmp_path / "p0.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 3])
    bad = [
        ImageRecord("empty", tmp_path / "empty.jpg"),
        ImageRecord("text", tmp_path / "text.jpg"),
        ImageRecord("cut", tmp_path / "cut.jpg"),
        ImageRecord("gone", tmp_path / "gone.jpg"),
    ]
    res = extractor.extract(items[:2] + bad + items[2:], progress=False)
    assert res.ids == ["p0", "p1", "p2"]
    reasons = {f.id: f.reason for f in res.failures}
    assert set(reasons) == {"empty", "text", "cut", "gone"}
    assert "empty" in reasons["empty"] and "not a recognised image" in reasons["text"]
    assert "truncated" in reasons["cut"] and "not found" in reasons["gone"]


def test_resume_skips_finished_chunks(extractor, tmp_path, monkeypatch):
    items = photos(tmp_path, n=8)
    cache = tmp_path / "cache"
    full = extractor.extract(items, progress=False)

    calls = {"n": 0}
    real = GlobalExtractor.embed_views

    def dying(self, batch, regions=1):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt  # killed after the first chunk was written
        return real(self, batch, regions)

    monkeypatch.setattr(GlobalExtractor, "embed_views", dying)
    with pytest.raises(KeyboardInterrupt):
        extractor.extract(items, cache_dir=cache, progress=False, chunk_size=1)
    assert len(list(cache.glob("chunk-*.npz"))) == 1
    monkeypatch.setattr(GlobalExtractor, "embed_views", real)

    seen = []
    monkeypatch.setattr(
        GlobalExtractor, "embed_views", lambda self, b, regions=1: seen.append(len(b)) or real(self, b, regions)
    )
    res = extractor.extract(items, cache_dir=cache, progress=False)
    assert sum(seen) < len(items)  # the finished chunk was not recomputed
    assert res.ids == full.ids and np.allclose(res.vectors, full.vectors, atol=1e-5)


def test_cache_from_another_config_is_not_reused(tmp_path):
    items = photos(tmp_path, n=2)
    a = GlobalExtractor(build_model(LITE0), ExtractConfig(image_size=96, num_workers=0, device="cpu"), LITE0)
    b = GlobalExtractor(a.net, ExtractConfig(image_size=160, num_workers=0, device="cpu"), LITE0)
    va = a.extract(items, cache_dir=tmp_path / "c", progress=False).vectors
    vb = b.extract(items, cache_dir=tmp_path / "c", progress=False).vectors
    assert not np.allclose(va, vb, atol=1e-3)
    assert np.allclose(vb, b.extract(items, progress=False).vectors, atol=1e-5)


def test_multiscale_and_flip_are_averages(extractor, tmp_path):
    items = photos(tmp_path, n=2, sizes=((256, 192),))
    base = ExtractConfig(image_size=128, num_workers=0, device="cpu")
    ms = GlobalExtractor(
        extractor.net, ExtractConfig(image_size=128, scales=(1.0, 0.75), flip=True, num_workers=0, device="cpu"), LITE0
    )
    got = ms.extract(items, progress=False).vectors
    # recompute by hand from the network
    from landmark.data import load_image
    from landmark.features.extract import to_tensor
    from landmark.models import functional as LF

    net = extractor.net
    with torch.no_grad():
        # 256x192 -> 128x96 at scale 1; scale 0.75 -> long side 96, short side 72 rounded to 64
        imgs = torch.stack([to_tensor(load_image(it.path), (96, 128), ms.mean, ms.std) for it in items])
        small = torch.nn.functional.interpolate(imgs, size=(64, 96), mode="bilinear", antialias=True)
        total = sum(net(v) for v in (imgs, imgs.flip(-1), small, small.flip(-1)))
    expected = LF.l2n(total).numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert ms.signature != GlobalExtractor(net, base, LITE0).signature


def test_repeated_ids_give_one_row(extractor, tmp_path):
    items = photos(tmp_path, n=3)
    res = extractor.extract(items + items[:1], progress=False)
    assert res.ids == ["p0", "p1", "p2"] and len(res.vectors) == 3


def test_regions_come_from_the_same_pass_and_survive_the_cache(extractor, tmp_path):
    items = photos(tmp_path, n=5)
    plain = extractor.extract(items, progress=False)
    res = extractor.extract(items, progress=False, regions=3, cache_dir=tmp_path / "cache", chunk_size=2)
    assert np.allclose(res.vectors, plain.vectors, atol=1e-5)  # the global descriptors do not change
    regions = res.extras[REGIONS_EXTRA]
    assert regions.shape == (5, 4 + 9, extractor.dim)
    assert regions.dtype == np.float16 and np.allclose(
        np.linalg.norm(regions.astype(np.float32), axis=2), 1.0, atol=2e-3
    )
    # each region is the descriptor of its window of the feature map
    item = items[0]
    w, h = Image.open(item.path).size
    from landmark.features.extract import to_tensor

    x = to_tensor(Image.open(item.path).convert("RGB"), extractor.target_shape(w, h), extractor.mean, extractor.std)[
        None
    ]
    with torch.no_grad():
        fmap = extractor.net.backbone(x)
        a, b, c, d = LF.region_windows(fmap.shape[-2], fmap.shape[-1], 3)[5]
        expected = extractor.net.describe(fmap[..., a:b, c:d])[0].numpy()
    assert np.allclose(regions[0, 5].astype(np.float32), expected, atol=5e-4)
    assert not np.allclose(regions[0, 5], res.vectors[0], atol=1e-2)
    again = extractor.extract(items, progress=False, regions=3, cache_dir=tmp_path / "cache")  # all from the cache
    assert np.allclose(again.extras[REGIONS_EXTRA], regions)
    # in-memory photos give the same
    _, extras = extractor.extract_images_with_probe([Image.open(it.path).convert("RGB") for it in items], regions=3)
    assert np.allclose(extras[REGIONS_EXTRA].astype(np.float32), regions.astype(np.float32), atol=1e-3)
    assert REGIONS_EXTRA not in plain.extras
