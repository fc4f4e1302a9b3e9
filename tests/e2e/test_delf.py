"""DELF end to end on real photos: `landmark train-delf` on a small GLDv2 layout (a tiny trained head:
4 landmarks x 10 photos, MobileNetV2, 3 epochs), then a store with ``local.kind=delf`` whose
re-ranked search verifies a stored photo against its own copy."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from landmark.api import Landmarks
from landmark.cli import app
from landmark.config import load_config
from landmark.models.delf import load_delf

pytestmark = pytest.mark.slow


def test_train_delf_then_store_and_verify_with_it(mini_gldv2, fast_overrides, tmp_path):
    out = tmp_path / "delf"
    result = CliRunner().invoke(
        app,
        [
            "train-delf",
            str(mini_gldv2),
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "backbone=mobilenet_v2",
            "--set",
            "sizes=[160]",
            "--set",
            "epochs=3",
            "--set",
            "pca_dim=40",
            "--set",
            "scales=[0.5,1.0]",
        ],
    )
    assert result.exit_code == 0, result.output
    ckpt = load_delf(out / "delf.pt")
    assert ckpt.num_classes == 4 and ckpt.channels == 96 and ckpt.pca["projection"].shape == (40, 96)
    cfg = load_config(
        overrides=[
            *fast_overrides,
            "local.kind=delf",
            f"local.checkpoint={out / 'delf.pt'}",
            "local.image_size=320",
            "local.max_keypoints=300",
            "rerank.threshold=16",
        ]
    )
    lm, _ = Landmarks.build(mini_gldv2, tmp_path / "s", cfg, splits=["index"], progress=False)
    assert lm.local is not None and lm.local.signature["kind"] == "delf" and len(lm.local) == len(lm.store)
    key = lm.store.keys()[2]
    again = lm.search([lm.store.get([key])[key].path], k=5, rerank=True)[0].matches
    assert again[0].id == key and again[0].inliers >= 50
    assert all(m.inliers < again[0].inliers for m in again[1:])
    # a missing checkpoint is a clear error on the command line
    bad = CliRunner().invoke(
        app,
        [
            "index",
            "build",
            str(mini_gldv2),
            "--store",
            str(tmp_path / "t"),
            "--set",
            "local.kind=delf",
            "--set",
            f"local.checkpoint={tmp_path / 'none.pt'}",
        ],
    )
    assert bad.exit_code == 2 and "does not exist" in bad.output
