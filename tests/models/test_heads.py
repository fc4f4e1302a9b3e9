import pytest
import torch

from landmark.models import functional as LF
from landmark.models.heads import ArcFace, CosFace, LinearHead, dynamic_margins


def test_arcface_true_class_logit_is_s_cos_theta_plus_m():
    torch.manual_seed(0)
    head = ArcFace(8, 5, scale=30.0, margin=0.3)
    x = torch.randn(4, 8)
    y = torch.tensor([0, 3, 4, 1])
    logits = head(x, y)
    cos = LF.cosine_logits(x, head.weight)
    theta = torch.acos(cos.gather(1, y.view(-1, 1)).squeeze(1))
    expected_true = 30.0 * torch.cos(theta + 0.3)
    assert torch.allclose(logits.gather(1, y.view(-1, 1)).squeeze(1), expected_true, atol=1e-4)
    # other classes: s * cos(theta), no margin
    mask = torch.ones_like(cos, dtype=torch.bool).scatter_(1, y.view(-1, 1), False)
    assert torch.allclose(logits[mask], 30.0 * cos[mask], atol=1e-4)


def test_arcface_margin_lowers_only_the_true_logit_and_stays_monotone():
    cos = torch.linspace(-0.99, 0.99, 50).view(-1, 1).repeat(1, 2)
    y = torch.zeros(50, dtype=torch.long)
    out = LF.arc_margin(cos, y, 1.0, 0.5)[:, 0]
    assert (out <= cos[:, 0] + 1e-6).all()
    assert (out[1:] >= out[:-1]).all()  # still increasing in cos(theta) past pi - m


def test_cosface_subtracts_margin():
    torch.manual_seed(1)
    head = CosFace(6, 3, scale=10.0, margin=0.35)
    x, y = torch.randn(2, 6), torch.tensor([2, 0])
    cos = LF.cosine_logits(x, head.weight)
    logits = head(x, y)
    assert torch.allclose(logits[0, 2], 10 * (cos[0, 2] - 0.35), atol=1e-5)
    assert torch.allclose(logits[0, 0], 10 * cos[0, 0], atol=1e-5)


def test_subcenter_takes_the_nearest_centre():
    head = ArcFace(2, 2, scale=1.0, margin=0.0, subcenters=2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    x = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(head.cosine(x), torch.tensor([[1.0, 0.0]]), atol=1e-6)


def test_dynamic_margins_grow_for_rare_classes():
    m = dynamic_margins(torch.tensor([1000, 100, 10, 1]), low=0.1, high=0.5)
    assert m[0] == pytest.approx(0.1) and m[-1] == pytest.approx(0.5)
    assert (m[1:] > m[:-1]).all()


def test_dynamic_margins_used_per_sample():
    head = ArcFace(4, 2, scale=1.0, margin=0.3, class_margins=torch.tensor([0.0, 0.5]))
    x = torch.randn(2, 4)
    y = torch.tensor([0, 1])
    cos = head.cosine(x)
    out = head(x, y)
    assert torch.allclose(out[0, 0], cos[0, 0], atol=1e-5)  # margin 0
    assert torch.allclose(out[1, 1], torch.cos(torch.acos(cos[1, 1]) + 0.5), atol=1e-5)  # margin 0.5


def test_linear_head_shape():
    assert LinearHead(5, 7)(torch.randn(3, 5)).shape == (3, 7)
