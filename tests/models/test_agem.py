"""Attention-aware GeM (aGeM): an attention branch on backbone stages re-weights the final map before GeM."""

from __future__ import annotations

import pytest
import torch

from landmark.config import ExtractConfig, ModelConfig
from landmark.features import GlobalExtractor
from landmark.models import build_model
from landmark.models import functional as LF
from landmark.models.export import export_onnx

AGEM = ModelConfig(backbone="tf_efficientnet_lite0", pooling="agem")
GEM = ModelConfig(backbone="tf_efficientnet_lite0", pooling="gem")


@pytest.fixture(scope="module")
def nets():
    agem, gem = build_model(AGEM).eval(), build_model(GEM).eval()
    return agem, gem


def uniform(net, value: float) -> None:
    """Make every attention unit give the same mask everywhere (its last conv: no weights, a bias)."""
    with torch.no_grad():
        for unit in net.attention.units:
            last = unit.net[-1]
            last.weight.zero_()
            last.bias.fill_(value)


def test_the_branch_reads_the_last_three_stages(nets):
    agem, gem = nets
    n = len(agem.backbone.stages())
    assert agem.taps == (n - 3, n - 2, n - 1) and gem.taps == () and gem.attention is None
    assert not any(k.startswith("attention.") for k in gem.state_dict())  # GeM checkpoints keep their keys
    assert any(k.startswith("attention.units.2.") for k in agem.state_dict())


@pytest.mark.parametrize("value", [-3.0, 0.0, 4.0])
def test_with_uniform_attention_it_equals_gem(nets, value):
    agem, gem = nets
    uniform(agem, value)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        assert torch.allclose(agem(x), gem(x), atol=1e-5)


def test_attention_moves_the_descriptor_towards_what_it_attends(nets):
    agem, _ = nets
    fmap = torch.rand(1, 4, 2, 2)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1.0  # attends the top-left quarter of a finer map
    out = LF.residual_attention(fmap, [mask])
    assert torch.allclose(out[..., 0, 0], 2 * fmap[..., 0, 0]) and torch.allclose(out[..., 1, 1], fmap[..., 1, 1])


def test_extraction_and_onnx_export_read_the_branch(nets, tmp_path):
    agem, _ = nets
    with torch.no_grad():
        for unit in agem.attention.units:
            unit.net[-1].weight.normal_(0, 0.5)  # attention that varies over the photo
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        ref = agem(x)
    for engine in ("torch", "auto"):
        ex = GlobalExtractor(
            agem, ExtractConfig(image_size=128, device="cpu", engine=engine), AGEM, engine_dir=tmp_path / "engines"
        )
        assert torch.allclose(ex.embed_batch(x), ref, atol=1e-4)
    assert export_onnx(agem, tmp_path / "agem.onnx", height=128, width=96) < 1e-4
