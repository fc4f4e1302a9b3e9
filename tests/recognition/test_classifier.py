"""The classifier predictor rebuilt from a checkpoint payload with the training heads."""

import numpy as np
import pytest
import torch

from landmark.models.heads import ArcFace, CosFace, LinearHead
from landmark.recognition.classifier import LandmarkClassifier

CLASSES = [47378, 90396, 168098]


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_arcface_head_predicts_the_nearest_class_centre():
    torch.manual_seed(0)
    head = ArcFace(16, 3, scale=30.0, margin=0.3)
    clf = LandmarkClassifier.from_payload({"head": head.state_dict(), "head_kind": "arcface", "classes": CLASSES})
    centres = _unit(head.weight.detach().numpy())
    pred = clf.predict(centres[[2, 0, 1]].astype(np.float32), k=3)
    assert pred.labels[:, 0].tolist() == [168098, 47378, 90396]
    assert np.all(np.diff(pred.probs, axis=1) <= 0) and np.all(pred.probs.sum(1) <= 1 + 1e-5)
    # probabilities are the softmax of s * cos at the trained scale
    logits = 30.0 * torch.as_tensor(centres[[2]]) @ torch.as_tensor(centres).T
    expect = torch.softmax(logits, 1).max().item()
    assert pred.probs[0, 0] == pytest.approx(expect, rel=1e-5)
    cold = LandmarkClassifier.from_payload(
        {"head": head.state_dict(), "head_kind": "arcface", "classes": CLASSES}, {"scale": 1.0}
    )
    assert cold.predict(centres[[2]].astype(np.float32)).probs[0, 0] < pred.probs[0, 0]


def test_subcenter_arcface_and_cosface_and_linear_heads():
    torch.manual_seed(1)
    sub = ArcFace(8, 3, subcenters=3)
    clf = LandmarkClassifier.from_payload(
        {"head": sub.state_dict(), "head_kind": "subcenter_arcface", "classes": CLASSES}
    )
    w = _unit(sub.weight.detach().numpy())
    assert clf.predict(w[[4]].astype(np.float32), k=1).labels[0, 0] == CLASSES[1]  # row 4 = class 1, sub-centre 1
    cos = CosFace(8, 3)
    clf = LandmarkClassifier.from_payload({"head": cos.state_dict(), "head_kind": "cosface", "classes": CLASSES})
    assert clf.predict(_unit(cos.weight.detach().numpy())[[1]].astype(np.float32), k=1).labels[0, 0] == CLASSES[1]
    lin = LinearHead(8, 3)
    with torch.no_grad():
        lin.fc.weight.copy_(torch.eye(3, 8))
        lin.fc.bias.zero_()
    clf = LandmarkClassifier.from_payload({"head": lin.state_dict(), "head_kind": "softmax", "classes": CLASSES})
    x = np.zeros((1, 8), np.float32)
    x[0, 2] = 1.0
    pred = clf.predict(x, k=2)
    assert pred.labels[0, 0] == CLASSES[2] and pred.probs.shape == (1, 2)
    bce = LandmarkClassifier.from_payload({"head": lin.state_dict(), "head_kind": "bce", "classes": CLASSES})
    p = bce.predict(x, k=3).probs[0]
    assert p[0] == pytest.approx(1 / (1 + np.exp(-np.sqrt(8))), rel=1e-5)  # sigmoid of the sqrt(D)-scaled logit


def test_payload_without_head_gives_no_classifier_and_checkpoint_file(tmp_path):
    assert LandmarkClassifier.from_payload({"head": None, "head_kind": "npairs", "classes": CLASSES}) is None
    assert LandmarkClassifier.from_payload({}) is None
    with pytest.raises(ValueError, match="unknown head kind"):
        LandmarkClassifier.from_payload({"head": {"w": torch.zeros(1)}, "head_kind": "mystery", "classes": CLASSES})
    head = ArcFace(16, 3)
    torch.save(
        {"model_config": {}, "state_dict": {}, "head": head.state_dict(), "head_kind": "arcface", "classes": CLASSES},
        tmp_path / "model.pt",
    )
    (tmp_path / "train_config.json").write_text('{"head": {"scale": 10.0, "margin": 0.2}}')
    clf = LandmarkClassifier.from_checkpoint(tmp_path / "model.pt")
    assert clf.head.scale == 10.0 and clf.classes.tolist() == CLASSES
    with pytest.raises(FileNotFoundError):
        LandmarkClassifier.from_checkpoint(tmp_path / "nothing.pt")
    assert clf.predict(np.zeros((0, 16), np.float32)).labels.shape == (0, 5)


@pytest.mark.parametrize("kind", ["arcface", "softmax"])
def test_ensemble_descriptors_are_read_through_the_trained_models_part(kind):
    torch.manual_seed(2)
    head = ArcFace(8, 3) if kind == "arcface" else LinearHead(8, 3)
    clf = LandmarkClassifier.from_payload({"head": head.state_dict(), "head_kind": kind, "classes": CLASSES})
    assert clf.dim == 8
    rng = np.random.default_rng(0)
    own, other = _unit(rng.normal(size=(4, 8))), _unit(rng.normal(size=(4, 12)))
    ensemble = (np.concatenate([own, other], 1) / np.sqrt(2)).astype(np.float32)  # what an ensemble store holds
    with pytest.raises(ValueError, match="reads 8-d descriptors, got 20-d"):
        clf.predict(ensemble)
    alone = clf.predict(own.astype(np.float32), k=3)
    via = clf.reading_leading().predict(ensemble, k=3)
    assert np.array_equal(via.labels, alone.labels) and np.allclose(via.probs, alone.probs, atol=1e-6)


def test_store_wiring_reads_ensembles_and_the_unwhitened_descriptors_of_whitened_stores(tmp_path):
    from landmark.config import load_config
    from landmark.index import Store
    from landmark.recognition.setup import make_recognizer

    from ..store_helpers import SIG

    torch.save({"head": ArcFace(8, 3).state_dict(), "head_kind": "arcface", "classes": CLASSES}, tmp_path / "model.pt")
    model = [f"model.checkpoint={tmp_path / 'model.pt'}"]

    def recognizer(name, overrides):
        cfg = load_config(overrides=model + overrides)
        return make_recognizer(Store.create(tmp_path / name, cfg, SIG), cfg.recognition, None)

    plain = recognizer("plain", []).classifier
    assert not plain.leading and not plain.unwhitened
    assert recognizer("ensemble", ["ensemble=[{backbone: mobilenet_v2}]"]).classifier.leading
    whitened = recognizer("whitened", ["whitening.kind=pca"]).classifier
    assert whitened.unwhitened and not whitened.leading
    both = recognizer("both", ["whitening.kind=pca", "ensemble=[{backbone: mobilenet_v2}]"]).classifier
    assert both.unwhitened and both.leading


@pytest.mark.parametrize("kind", ["arcface", "subcenter_arcface", "cosface", "softmax", "bce"])
def test_every_head_kind_with_a_head_comes_back_from_its_checkpoint_payload(kind):
    """The classifier rebuilds a trained head of any registered kind (landmark.models.config.HEADS)."""
    from types import SimpleNamespace

    from landmark.models.config import HEADS

    settings = SimpleNamespace(
        scale=16.0, margin=0.2, subcenters=3, dynamic_margin=kind == "arcface", margin_low=0.05, margin_high=0.5
    )
    head = HEADS[kind].make(16, [5, 1, 2], settings)
    clf = LandmarkClassifier.from_payload(
        {"head": head.state_dict(), "head_kind": kind, "classes": CLASSES}, {"scale": 16.0}
    )
    x = torch.nn.functional.normalize(torch.randn(4, 16), dim=1).numpy()
    want = head.logits(torch.as_tensor(x) * (4.0 if HEADS[kind].linear else 1.0))
    assert torch.allclose(clf.logits(x), want, atol=1e-5)
