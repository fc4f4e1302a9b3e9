"""Starting training from the pretrained descriptor: PCA-initialised embedding, class-mean head."""

from __future__ import annotations

import pytest
import torch

from landmark.config import ModelConfig
from landmark.models import functional as LF
from landmark.models.heads import ArcFace
from landmark.models.net import build_model
from landmark.training import load_train_config
from landmark.training.module import TrainModule, initialise_from_features


def _module(embedding_dim, head):
    cfg = load_train_config(
        "cpu-mini", overrides={"model": {"backbone": "tf_efficientnet_lite0", "embedding_dim": embedding_dim}}
    )
    net = build_model(ModelConfig(backbone="tf_efficientnet_lite0", embedding_dim=embedding_dim), pretrained=False)
    return TrainModule(net, head, cfg)


def _clusters(n_per=20, classes=3, dim=1280, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    x = torch.cat([c + torch.randn(n_per, dim, generator=g) for c in centres]).abs()  # pooled features are >= 0
    return x, torch.arange(classes).repeat_interleave(n_per)


def test_pca_embedding_outputs_centred_pca_coordinates():
    x, y = _clusters()
    mod = _module(32, None)
    initialise_from_features(mod, x, y)
    emb = mod.net.embedding.eval()
    z = emb(x).detach()
    # the layer is the centred projection onto the 32 leading principal axes: orthonormal rows,
    # zero-mean outputs whose variances are the leading eigenvalues (not whitened to 1)
    w = emb[0].weight
    assert torch.allclose(w @ w.T, torch.eye(32), atol=1e-4)
    assert torch.allclose(z.mean(0), torch.zeros(32), atol=1e-3)
    xc = x - x.mean(0)
    eig = torch.linalg.svdvals(xc.double()) ** 2 / len(x)
    assert torch.allclose(z.double().var(0, unbiased=False), eig[:32], rtol=1e-3)
    # in training mode BN standardises each batch and its scale restores the same coordinates
    emb.train()
    assert torch.allclose(emb(x).detach(), z, atol=1e-2 * float(z.abs().max()))


def test_a_trained_embedding_is_kept_and_only_the_head_initialised():
    x, y = _clusters()
    head = ArcFace(32, 3)
    mod = _module(32, head)
    trained = {k: v.clone() for k, v in mod.net.embedding.state_dict().items()}  # as loaded from model.checkpoint
    done = initialise_from_features(mod, x, y, embedding=False)
    assert done == {"head": "class means of 3/3 classes"}
    assert all(torch.equal(v, mod.net.embedding.state_dict()[k]) for k, v in trained.items())
    z = LF.l2n(mod.net.embedding.eval()(x).detach())  # the centres are the means of *its* outputs
    assert torch.allclose(
        head.weight, LF.l2n(torch.stack([LF.l2n(z[y == c].mean(0, keepdim=True))[0] for c in range(3)])), atol=1e-5
    )


def test_pca_needs_more_crops_than_dimensions():
    x, y = _clusters(n_per=5)
    with pytest.raises(ValueError, match="needs more than 32"):
        initialise_from_features(_module(32, None), x[:, :64].repeat(1, 20), y)


@pytest.mark.parametrize("subcenters", [1, 3])
def test_cosine_head_starts_at_class_means(subcenters):
    x, y = _clusters()
    head = ArcFace(1280, 3, subcenters=subcenters)
    mod = _module(None, head)
    before = head.weight.detach().clone()
    done = initialise_from_features(mod, x, y)
    assert done == {"head": "class means of 3/3 classes"}
    z = LF.l2n(x)
    means = LF.l2n(torch.stack([z[y == c].mean(0) for c in range(3)]))
    cos = head.cosine(z)
    if subcenters == 1:
        assert torch.allclose(head.weight, means, atol=1e-5)
    else:  # each sub-centre is near its class mean but they stay distinct
        w = head.weight.view(3, subcenters, -1)
        assert (torch.einsum("ckd,cd->ck", w, means) > 0.99).all()
        assert not torch.allclose(w[:, 0], w[:, 1])
    assert (cos.argmax(1) == y).all() and not (
        LF.cosine_logits(z, before).view(len(z), 3, -1).amax(2).argmax(1) == y
    ).all()


def test_frozen_stages_keep_their_imagenet_batchnorm_statistics():
    """Caching crops through the frozen stages (a fresh module is in training mode) must neither use
    batch statistics nor overwrite the running ones."""
    cfg = load_train_config("cpu-mini", overrides={"model": {"backbone": "tf_efficientnet_lite0"}, "freeze_stages": 4})
    mod = TrainModule(build_model(ModelConfig(backbone="tf_efficientnet_lite0"), pretrained=False), None, cfg)
    bns = [m for m in mod.prefix.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [b.running_mean.clone() for b in bns]
    x = torch.randn(4, 3, 64, 64) * 3 + 1
    out = mod.frozen_features(x)
    assert all(torch.equal(b.running_mean, m) for b, m in zip(bns, before))
    assert torch.allclose(out, mod.prefix.eval()(x), atol=1e-6)  # the same as inference
    mod.train()
    assert not mod.prefix.training and mod.suffix.training
