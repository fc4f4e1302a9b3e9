"""Service settings: typed overrides, checked keys and ranges; the CLI command exists and is thin."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from landmark.cli import app
from landmark.config import ConfigError
from landmark.service import ServiceSettings, load_settings
from landmark.service.errors import ServiceError
from landmark.service.uploads import TokenCache, check_id, decode_upload


def test_overrides_are_typed_and_checked():
    s = load_settings(["max_upload_bytes=1000", "thumbnail_size=128", "torch_threads=2"])
    assert (s.max_upload_bytes, s.thumbnail_size, s.torch_threads) == (1000, 128, 2)
    assert s.max_pixels == ServiceSettings().max_pixels
    assert load_settings({"default_k": 5}).default_k == 5
    with pytest.raises(ConfigError, match="unknown config key max_upload"):
        load_settings(["max_upload=1"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_settings(["max_pixels=lots"])
    with pytest.raises(ConfigError, match="at least 1"):
        load_settings(["max_upload_bytes=0"])
    with pytest.raises(ConfigError, match="default_k"):
        load_settings(["default_k=500"])


@pytest.mark.parametrize("bad", ["../x", "..", ".", "a/../b", "/etc/passwd", "a\\b", "a//b", "a\x00b", "", "x" * 600])
def test_path_like_ids_are_refused(bad):
    with pytest.raises(ServiceError) as exc:
        check_id(bad)
    assert exc.value.status == 400


@pytest.mark.parametrize("good", ["3f2a9c1d", "u-0123abcd", "Eiffel/img_01", "photo.v2"])
def test_plain_ids_pass(good):
    assert check_id(good) == good


def test_decode_upload_limits_come_from_settings():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(buf, "PNG")
    data = buf.getvalue()
    assert decode_upload(data, ServiceSettings()).size == (300, 200)
    with pytest.raises(ServiceError) as exc:
        decode_upload(data, ServiceSettings(max_pixels=59_999))
    assert exc.value.status == 413 and "60,000 pixels" in exc.value.message
    with pytest.raises(ServiceError) as exc:
        decode_upload(data, ServiceSettings(max_upload_bytes=len(data) - 1))
    assert exc.value.status == 413


def test_token_cache_is_bounded_and_expires():
    from PIL import Image

    cache = TokenCache(capacity=2, ttl_s=60)
    a, b, c = (cache.put(Image.new("RGB", (1, 1))) for _ in range(3))
    assert cache.get(a) is None and cache.get(b) is not None and cache.get(c) is not None and len(cache) == 2
    expired = TokenCache(capacity=2, ttl_s=0)
    t = expired.put(Image.new("RGB", (1, 1)))
    assert expired.get(t) is None


def test_serve_command_is_registered():
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for opt in ("--store", "--host", "--port", "--set"):
        assert opt in result.output


def test_serve_without_a_store_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["serve", "--store", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no store at" in result.output
