"""A probe (e.g. the ImageNet class-group prior) computed in the descriptor's forward pass."""

import numpy as np
from PIL import Image

from landmark.config import ExtractConfig, ModelConfig
from landmark.data import ImageRecord
from landmark.features import GlobalExtractor
from landmark.models import build_model
from landmark.recognition.filters import ClassGroups, ImageNetPrior

LITE0 = ModelConfig(backbone="tf_efficientnet_lite0")


def photos(tmp_path, n=4):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        p = tmp_path / f"p{i}.jpg"
        Image.fromarray((rng.random((96 + 32 * (i % 2), 128, 3)) * 255).astype(np.uint8)).save(p)
        items.append(ImageRecord(f"p{i}", p))
    return items


def test_probe_shares_the_forward_pass_and_is_cached(tmp_path):
    net = build_model(LITE0)
    cfg = ExtractConfig(image_size=128, batch_size=2, num_workers=0, device="cpu", flip=True)
    plain = GlobalExtractor(net, cfg, LITE0)
    probed = GlobalExtractor(net, cfg, LITE0)
    groups = ClassGroups.load()
    probed.set_probe("imagenet_groups", ImageNetPrior(net.backbone, groups))
    items = photos(tmp_path)
    calls = []
    real = net.backbone.forward
    net.backbone.forward = lambda x: calls.append(1) or real(x)
    a = plain.extract(items, progress=False)
    n_plain = len(calls)
    b = probed.extract(items, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 2 * n_plain                          # no extra pass over the trunk for the probe
    net.backbone.forward = real
    assert np.allclose(a.vectors, b.vectors, atol=1e-5) and a.extras == {}
    p = b.extras["imagenet_groups"]
    assert p.shape == (4, len(groups.names)) and np.allclose(p.sum(1), 1, atol=1e-4)
    # the probe equals the classifier on the same photo (averaged over the photo and its flip)
    img = Image.open(items[0].path).convert("RGB")
    _, direct = probed.extract_images_with_probe([img])
    assert np.allclose(direct["imagenet_groups"][0], p[0], atol=1e-4)
    # resumed from the cache: same values, probe included
    c = probed.extract(items, cache_dir=tmp_path / "cache", progress=False)
    assert np.allclose(c.extras["imagenet_groups"], p, atol=1e-6)
    # a cache made without the probe is not reused by an extractor with it (signature differs)
    plain.extract(items, cache_dir=tmp_path / "cache2", progress=False)
    d = probed.extract(items, cache_dir=tmp_path / "cache2", progress=False)
    assert d.extras["imagenet_groups"].shape == (4, len(groups.names))
