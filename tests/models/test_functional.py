import pytest
import torch

from landmark.models import functional as LF
from landmark.models.pooling import MAC, GeM, SPoC, make_pooling


def fmap():
    torch.manual_seed(0)
    return torch.rand(2, 4, 5, 7)


def test_gem_matches_definition():
    x = fmap()
    expected = (x.clamp(min=1e-6) ** 3).mean(dim=(2, 3)) ** (1 / 3)
    assert torch.allclose(LF.gem(x, 3.0), expected, atol=1e-6)


def test_gem_special_cases_are_spoc_and_tend_to_mac():
    x = fmap()
    assert torch.allclose(LF.gem(x, 1.0), LF.spoc(x), atol=1e-6)
    assert torch.allclose(LF.gem(x.double(), 200.0), LF.mac(x.double()), atol=2e-2)
    # between mean and max for any p > 1
    g = LF.gem(x, 3.0)
    assert (g >= LF.spoc(x) - 1e-6).all() and (g <= LF.mac(x) + 1e-6).all()


def test_gem_per_channel_p():
    x = fmap()
    p = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = LF.gem(x, p)
    for c in range(4):
        assert torch.allclose(out[:, c], LF.gem(x[:, c : c + 1], float(p[c]))[:, 0], atol=1e-6)


def test_l2n_unit_rows():
    v = torch.randn(5, 9)
    assert torch.allclose(torch.linalg.vector_norm(LF.l2n(v), dim=1), torch.ones(5), atol=1e-5)


def test_target_shape_keeps_aspect_and_multiple():
    assert LF.target_shape(256, 256, 384, 32) == (384, 384)
    h, w = LF.target_shape(1500, 2000, 384, 32)  # 288 x 384
    assert (h, w) == (288, 384)
    h, w = LF.target_shape(3000, 1000, 384, 32)  # tall: 384 x 128
    assert (h, w) == (384, 128)
    assert LF.target_shape(10, 5000, 384, 32)[0] == 32  # never below one multiple


def test_gem_module_trainable_and_fixed():
    trainable = GeM(p=3.0, trainable=True)
    fixed = GeM(p=3.0, trainable=False)
    assert [n for n, _ in trainable.named_parameters()] == ["p"]
    assert list(fixed.parameters()) == []
    x = fmap().requires_grad_()
    trainable(x).sum().backward()
    assert trainable.p.grad is not None and torch.isfinite(trainable.p.grad)
    assert torch.allclose(fixed(fmap()), LF.gem(fmap(), 3.0))


def test_make_pooling():
    assert isinstance(make_pooling("MAC"), MAC)
    assert isinstance(make_pooling("spoc"), SPoC)
    assert float(make_pooling("gem", p=4.0).p) == 4.0
    with pytest.raises(ValueError, match="unknown pooling"):
        make_pooling("max")


def test_region_windows_tile_each_level_with_half_overlap():
    wins = LF.region_windows(12, 12, 3)
    # level 2: 2 x 2 windows of 8 cells; level 3: 3 x 3 windows of 6 cells, starts 0 / 3 / 6
    assert wins[:4] == [(0, 8, 0, 8), (0, 8, 4, 12), (4, 12, 0, 8), (4, 12, 4, 12)]
    assert wins[4:] == [(a, a + 6, c, c + 6) for a in (0, 3, 6) for c in (0, 3, 6)]
    assert LF.region_windows(12, 12, 1) == [] and LF.region_windows(12, 12, 0) == []


def test_region_windows_stay_inside_tiny_maps_and_keep_their_count():
    for h, w in ((1, 1), (1, 5), (2, 3), (7, 4)):
        wins = LF.region_windows(h, w, 4)
        assert len(wins) == 4 + 9 + 16
        assert all(0 <= a < b <= h and 0 <= c < d <= w for a, b, c, d in wins)
