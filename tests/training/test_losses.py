import math

import pytest
import torch

from landmark.training.losses import npairs_loss, one_vs_all_bce, smoothed_cross_entropy


def test_label_smoothing_matches_definition():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    logp = torch.log_softmax(logits, dim=1)[0]
    eps = 0.2
    expected = -((1 - eps) * logp[0] + eps / 3 * logp.sum())
    assert smoothed_cross_entropy(logits, y, eps).item() == pytest.approx(expected.item(), rel=1e-6)


def test_bce_one_vs_all_definition():
    logits = torch.tensor([[3.0, -1.0]])
    y = torch.tensor([1])
    sig = torch.sigmoid(logits)[0]
    expected = -(math.log(1 - sig[0]) + math.log(sig[1])) / 2
    assert one_vs_all_bce(logits, y).item() == pytest.approx(expected, rel=1e-5)


def test_npairs_prefers_separated_classes():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    tight = torch.nn.functional.one_hot(y, 3).float()  # pairs identical, classes orthogonal
    mixed = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 1.0], [1.0, 0, 0]])
    assert npairs_loss(tight, y, scale=10) < npairs_loss(mixed, y, scale=10)
    # closed form for the tight case: each anchor sees e^10 vs 2 negatives at e^0
    assert npairs_loss(tight, y, scale=10).item() == pytest.approx(math.log(1 + 2 * math.exp(-10)), rel=1e-3)
    assert npairs_loss(tight[:2], y[:2]).item() == 0.0  # a single class: no pairs to contrast
