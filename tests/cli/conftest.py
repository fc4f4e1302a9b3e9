"""Fixtures for the CLI tests: small stores made with the stand-in network (milliseconds a photo) and
real local features (RootSIFT), and a runner that keeps stdout and stderr apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from landmark.api import Landmarks
from landmark.cli import app
from landmark.config import load_config
from stand_ins import LONG_IDS, ContentExtractor, noise_photos, use_content_extractor

CONFIG = ["whitening.kind=none"]  # local features on (RootSIFT), as by default


@pytest.fixture
def extractor(monkeypatch) -> ContentExtractor:
    return use_content_extractor(monkeypatch)


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of 6 photos named by long hex ids."""
    folder = tmp_path / "photos"
    noise_photos(folder, [f"{i}.png" for i in LONG_IDS])
    return folder


@pytest.fixture
def store(extractor, photos, tmp_path) -> Path:
    """A store of the 6 photos, labelled landmark 7 ("Seven"), with local features."""
    lm = Landmarks.create(tmp_path / "store", load_config(overrides=CONFIG))
    lm.add_photos([photos], landmark_id=7, name="Seven", progress=False)
    lm.store.close()
    return tmp_path / "store"


@pytest.fixture
def cli():
    """``cli(*args)``: the CLI as a script runs it (stdout is not a terminal), stderr apart."""

    def run(*args, **env):
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, env=env or None)

    return run
