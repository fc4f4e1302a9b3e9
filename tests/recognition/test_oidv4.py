"""The Open Images v4 detector (MediaPipe's SSD-MobileNetV2): anchors, decoding, suppression, the fetch."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from landmark.recognition import oidv4
from landmark.recognition.filters import NON_LANDMARK, UNCERTAIN, FilterConfigError, detector_decision
from landmark.utils.io import user_cache_dir

# read at collection, before the session points LANDMARK_CACHE elsewhere: where `make install` put the model
INSTALLED = user_cache_dir() / "models" / oidv4.MODEL_FILE


def test_anchors_are_mediapipes_1917():
    a = oidv4.ssd_anchors()
    assert a.shape == (1917, 4)  # 19x19x3 + (10x10 + 5x5 + 3x3 + 2x2 + 1x1) x 6
    assert np.allclose(a[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1])  # lowest layer: 0.1 at ratio 1 first
    assert np.allclose(a[1, 2:], [0.2 / np.sqrt(2), 0.2 * np.sqrt(2)])  # then min_scale at ratio 2 (h, w)
    last = a[-6:]  # the 1x1 layer: centred, max scale 0.95, then the interpolated one
    assert np.allclose(last[:, :2], 0.5) and np.isclose(last[0, 2], 0.95) and np.isclose(last[-1, 2], np.sqrt(0.95))


def test_zero_offsets_decode_to_the_anchor_and_sizes_grow_exponentially():
    anchors = np.array([[0.5, 0.4, 0.2, 0.3]], np.float32)  # cx, cy, h, w
    assert np.allclose(oidv4.decode_boxes(np.zeros((1, 4), np.float32), anchors), [[0.35, 0.3, 0.65, 0.5]])
    grown = oidv4.decode_boxes(np.array([[0, 0, 5 * np.log(2), 0]], np.float32), anchors)  # h offset: h x 2
    assert np.allclose(grown, [[0.35, 0.2, 0.65, 0.6]])


def test_suppression_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert oidv4.nms(boxes, np.array([0.5, 0.9, 0.4]), 0.4) == [1, 2]


def test_a_package_whose_model_is_not_the_published_one_is_refused(tmp_path):
    packed = b"???\nPerson\n".ljust(184, b"\n") + b"not the model" * 100
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(oidv4.PACKED)
        info.size = len(packed)
        tar.addfile(info, io.BytesIO(packed))
    (tmp_path / "pkg.tgz").write_bytes(buf.getvalue())
    with pytest.raises(FilterConfigError, match="SHA-256"):
        oidv4.fetch(tmp_path / "models", source=tmp_path / "pkg.tgz")
    assert not (tmp_path / "models" / oidv4.MODEL_FILE).exists()


def test_a_missing_model_names_the_install_command(tmp_path):
    with pytest.raises(FilterConfigError, match="landmark install-detector"):
        oidv4.OidV4Detector(tmp_path / "none.tflite")


@pytest.mark.skipif(
    not INSTALLED.is_file(), reason="the Open Images detector is not installed (make install fetches it)"
)
def test_the_installed_detector_finds_a_cat_that_fills_the_photo(gldv2_root):
    photo = gldv2_root / "test" / "0" / "b" / "4" / "0b439b65c6d54c64.jpg"  # a non-landmark query
    det = oidv4.OidV4Detector(INSTALLED)
    image = Image.open(photo)
    found = det.detect(image)
    assert found and found[0].label == "Cat" and found[0].score > 0.6
    assert detector_decision(found, image.size, det.roles).decision == NON_LANDMARK
    blank = Image.new("RGB", (320, 240), (120, 160, 200))  # sky: nothing to find
    assert detector_decision(det.detect(blank), blank.size, det.roles).decision == UNCERTAIN
