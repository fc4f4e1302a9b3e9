"""The service logs its requests, and refuses an empty id for a new photo (issue #29), on a store made
with the stand-in network (milliseconds)."""

from __future__ import annotations

import io

import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import landmark.service
from landmark.api import Landmarks
from landmark.cli import app
from landmark.config import load_config
from landmark.service import ServiceSettings, create_app, load_settings
from stand_ins import noise_photos, use_content_extractor


@pytest.fixture
def store(monkeypatch, tmp_path):
    use_content_extractor(monkeypatch)
    lm = Landmarks.create(tmp_path / "store", load_config(overrides=["whitening.kind=none", "local.enabled=false"]))
    lm.add_photos([noise_photos(tmp_path / "photos", ["a.png"])[0]], landmark_id=1, progress=False)
    return lm


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (9, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


def test_an_empty_id_is_refused_not_taken_for_no_id(store):
    with TestClient(create_app(store, ServiceSettings())) as c:
        r = c.post("/images", files={"photo": ("x.png", png(), "image/png")}, data={"id": ""})
        assert r.status_code == 400 and "invalid id ''" in r.json()["error"]
        assert len(store.store) == 1 and not (store.store.root / "uploads").exists()
        r = c.post("/images", files={"photo": ("x.png", png(), "image/png")})  # no id field: one is made
        assert r.status_code == 201 and r.json()["id"].startswith("u-")


def test_serve_logs_requests_unless_told_not_to(tmp_path, monkeypatch):
    runs = []
    monkeypatch.setattr(landmark.service, "create_app", lambda store, settings, device=None: "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    cases = [[], ["--no-access-log"], ["--set", "access_log=false"], ["--set", "access_log=false", "--access-log"]]
    for extra in cases:
        result = CliRunner().invoke(app, ["serve", "--store", str(tmp_path), *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert [kw["access_log"] for kw in runs] == [True, False, False, True]
    assert {kw["log_level"] for kw in runs} == {"info"}  # the level the access log writes at
    assert load_settings().access_log is True
