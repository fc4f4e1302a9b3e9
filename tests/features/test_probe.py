"""A probe (e.g. the ImageNet class-group prior) computed in the descriptor's forward pass."""

import numpy as np
import pytest
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
    cfg = ExtractConfig(
        image_size=128, batch_size=2, num_workers=0, device="cpu", flip=True, engine="torch"
    )  # counts the passes of the torch trunk
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
    assert len(calls) == 2 * n_plain  # no extra pass over the trunk for the probe
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


def _fine_tune(net, stages=(-2, -1), seed=0):
    """Change the last ``stages`` of ``net``'s backbone as training would (the rest stays pretrained)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in stages:
            for p in net.backbone.stages()[i].parameters():
                p.mul_(1 + 0.5 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.slow
def test_a_fine_tuned_backbone_is_probed_with_its_pretrained_classifier(tmp_path):
    """After fine-tuning, the prior reads the pretrained network from the first changed stage on: the
    probabilities equal the untouched model's, the descriptors are the fine-tuned model's."""
    from landmark.models.backbones import pretrained_tail

    groups = ClassGroups.load()
    cfg = ExtractConfig(image_size=128, batch_size=2, num_workers=0, device="cpu", flip=True)
    items = photos(tmp_path)
    pristine = build_model(LITE0)
    assert pretrained_tail(pristine.backbone) is None and ImageNetPrior.for_backbone(pristine.backbone).tap is None
    reference = GlobalExtractor(pristine, cfg, LITE0)
    reference.set_probe("g", ImageNetPrior(pristine.backbone, groups))
    want = reference.extract(items, progress=False).extras["g"]

    tuned = _fine_tune(build_model(LITE0))
    n_stages = len(tuned.backbone.stages())
    prior = ImageNetPrior.for_backbone(tuned.backbone, groups)
    assert prior.tap == n_stages - 2 and prior.source.endswith(f"stage {n_stages - 2}")
    probed = GlobalExtractor(tuned, cfg, LITE0)
    probed.set_probe("g", prior)
    got = probed.extract(items, progress=False)
    assert np.allclose(got.extras["g"], want, atol=1e-4)
    # the descriptors are still the fine-tuned model's own (the split forward pass is the same pass)
    assert np.allclose(
        got.vectors, GlobalExtractor(tuned, cfg, LITE0).extract(items, progress=False).vectors, atol=1e-5
    )
    # reading the fine-tuned trunk with the ImageNet head would give other numbers
    own = GlobalExtractor(tuned, cfg, LITE0)
    own.set_probe("g", ImageNetPrior(tuned.backbone, groups))
    assert np.abs(own.extract(items, progress=False).extras["g"] - want).max() > 1e-2
    # only the classifier changed: the tail is the pretrained classifier on the final feature map
    head_only = build_model(LITE0)
    with __import__("torch").no_grad():
        next(head_only.backbone.head.parameters()).mul_(2.0)
    assert ImageNetPrior.for_backbone(head_only.backbone).tap == n_stages
