"""DELF's network: the attention pooling, the softplus scores, the stage choice and the checkpoint format."""

from __future__ import annotations

import pytest
import torch

from landmark.errors import LandmarkError
from landmark.models.backbones import create_backbone
from landmark.models.delf import (
    AttentionHead,
    DelfCheckpoint,
    DelfCheckpointError,
    DelfHead,
    attention_pool,
    default_stage,
    load_delf,
    save_delf,
    stage_strides,
)


def test_attention_pool_is_the_score_weighted_mean_of_the_features():
    f = torch.randn(2, 5, 3, 4)
    a = torch.rand(2, 1, 3, 4)
    expected = torch.stack(
        [sum(a[b, 0, i, j] * f[b, :, i, j] for i in range(3) for j in range(4)) / 12 for b in range(2)]
    )
    assert torch.allclose(attention_pool(f, a), expected, atol=1e-6)
    # uniform scores of 1 give plain average pooling
    assert torch.allclose(attention_pool(f, torch.ones(2, 1, 3, 4)), f.mean(dim=(2, 3)), atol=1e-6)


def test_attention_scores_are_positive_one_per_location_and_gradients_reach_the_head():
    head = DelfHead(8, num_classes=3, hidden=4)
    f = torch.randn(2, 8, 5, 6)
    logits, scores = head(f)
    assert logits.shape == (2, 3) and scores.shape == (2, 1, 5, 6)
    assert (scores > 0).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert head.attention.conv1.weight.grad is not None and head.attention.conv1.weight.grad.abs().sum() > 0


def test_default_stage_is_the_last_at_stride_16():
    b = create_backbone("mobilenet_v2", pretrained=False)
    strides = stage_strides(b)
    k = default_stage(b)
    assert strides[k - 1] == 16 and strides[k] == 32
    assert b.run_stages(torch.zeros(1, 3, 96, 128), 0, k).shape[-2:] == (6, 8)


def _ckpt() -> DelfCheckpoint:
    head = DelfHead(96, 4, 8)
    return DelfCheckpoint(
        "mobilenet_v2",
        14,
        head.state_dict(),
        96,
        4,
        8,
        {
            "mean": torch.zeros(96, dtype=torch.float64),
            "projection": torch.eye(96, dtype=torch.float64)[:40],
            "eigenvalues": torch.ones(40, dtype=torch.float64),
            "power": 0.0,
            "shrinkage": 0.0,
        },
        (0.5, 1.0),
        {"note": "test"},
    )


def test_checkpoint_round_trips_and_builds_the_same_head(tmp_path):
    ckpt = _ckpt()
    save_delf(tmp_path / "d.pt", ckpt)
    back = load_delf(tmp_path / "d.pt")
    got = (back.backbone, back.stage, back.channels, back.num_classes, back.scales)
    assert got == ("mobilenet_v2", 14, 96, 4, (0.5, 1.0))
    net = back.build(pretrained=False)
    assert all(torch.equal(v, ckpt.head[k]) for k, v in net.head.state_dict().items())
    assert net.stride == 16 and not any(p.requires_grad for p in net.backbone.parameters())


def test_a_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(DelfCheckpointError, match=r"does not exist.*train-delf"):
        load_delf(tmp_path / "nope.pt")
    with pytest.raises(DelfCheckpointError, match=r"local\.checkpoint"):
        load_delf("")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(DelfCheckpointError, match="not a DELF checkpoint"):
        load_delf(tmp_path / "other.pt")
    assert issubclass(DelfCheckpointError, LandmarkError)


def test_attention_head_is_small():
    assert sum(p.numel() for p in AttentionHead(120, 256).parameters()) < 40_000
