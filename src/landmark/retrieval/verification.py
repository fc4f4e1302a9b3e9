"""Geometric verification of matches with OpenCV USAC (MAGSAC++), and the picture of the evidence.

:func:`verify` fits a homography (planar scenes, distant facades), a fundamental matrix (general
3-D scenes) or a 2-D affine map to the tentative matches of two photos and returns the inlier count
and inlier ratio. Hopeless pairs exit early: fewer tentative matches than ``min_inliers`` means no
model is fitted at all. Keypoints are in each photo's extraction frame (see
:mod:`landmark.features.local`); the threshold is in those pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..features.local import LocalFeatures
from .config import VERIFICATION_MODELS as MODELS

_MIN_SAMPLE = {"homography": 4, "fundamental": 8, "affine": 3}


@dataclass
class Verification:
    """The outcome of verifying one pair."""

    inliers: int = 0  # matches consistent with the fitted model
    matches: int = 0  # tentative matches that went in
    model: np.ndarray | None = None  # 3x3 (homography, fundamental) or 2x3 (affine), a -> b
    mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # inlier flag per match

    @property
    def ratio(self) -> float:
        """Inliers over tentative matches (0 when there are none)."""
        return self.inliers / self.matches if self.matches else 0.0


# rerank.model -> its MAGSAC++ estimator: (src, dst, threshold, max_iters, confidence) -> (model, inlier mask)
ESTIMATORS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "homography": lambda src, dst, t, it, conf: cv2.findHomography(
        src, dst, cv2.USAC_MAGSAC, t, maxIters=it, confidence=conf
    ),
    "fundamental": lambda src, dst, t, it, conf: cv2.findFundamentalMat(src, dst, cv2.USAC_MAGSAC, t, conf, it),
    "affine": lambda src, dst, t, it, conf: cv2.estimateAffine2D(
        src, dst, method=cv2.USAC_MAGSAC, ransacReprojThreshold=t, maxIters=it, confidence=conf
    ),
}


def verify(
    xy_a: np.ndarray,
    xy_b: np.ndarray,
    matches: np.ndarray,
    *,
    model: str = "homography",
    threshold: float = 8.0,
    max_iters: int = 1000,
    confidence: float = 0.999,
    min_inliers: int = 12,
) -> Verification:
    """Fit ``model`` to ``matches`` (M x 2 indices into ``xy_a`` and ``xy_b``) with MAGSAC++."""
    if model not in MODELS:
        raise ValueError(f"unknown verification model {model!r}; choose one of {MODELS}")
    m = len(matches)
    out = Verification(0, m, None, np.zeros(m, bool))
    if m < max(min_inliers, _MIN_SAMPLE[model]):  # hopeless: not even enough tentative matches
        return out
    src = np.ascontiguousarray(xy_a[matches[:, 0]], dtype=np.float32).reshape(-1, 1, 2)
    dst = np.ascontiguousarray(xy_b[matches[:, 1]], dtype=np.float32).reshape(-1, 1, 2)
    try:
        fit, mask = ESTIMATORS[model](src, dst, threshold, max_iters, confidence)
    except cv2.error:  # degenerate configurations (all points on a line, ...)
        return out
    if fit is None or mask is None:
        return out
    mask = mask.ravel().astype(bool)
    if model == "fundamental" and fit.shape[0] > 3:  # several solutions stacked: keep the first
        fit = fit[:3]
    return Verification(int(mask.sum()), m, fit, mask)


def verify_features(a: LocalFeatures, b: LocalFeatures, matches: np.ndarray, **kwargs) -> Verification:
    return verify(a.xy, b.xy, matches, **kwargs)


def draw_matches(
    image_a: Image.Image,
    image_b: Image.Image,
    a: LocalFeatures,
    b: LocalFeatures,
    matches: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    max_lines: int = 300,
    height: int = 480,
) -> bytes:
    """PNG of the two photos side by side with lines between matched keypoints (inliers only if ``mask``)."""
    pairs = matches if mask is None else matches[np.asarray(mask, bool)]
    if len(pairs) > max_lines:
        pairs = pairs[np.linspace(0, len(pairs) - 1, max_lines).astype(int)]
    panels, offsets, scales = [], [], []
    x = 0
    for img, feats in ((image_a, a), (image_b, b)):
        w, h = (feats.width, feats.height) if feats.width and feats.height else img.size
        rgb = np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
        f = height / rgb.shape[0]
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * f)), height), interpolation=cv2.INTER_AREA)
        panels.append(rgb)
        offsets.append(x)
        scales.append(f)
        x += rgb.shape[1]
    canvas = np.concatenate(panels, axis=1).copy()
    rng = np.random.default_rng(0)
    for i, j in pairs:
        color = tuple(int(c) for c in rng.integers(64, 256, 3))
        pa = a.xy[i] * scales[0] + (offsets[0], 0)
        pb = b.xy[j] * scales[1] + (offsets[1], 0)
        pa_i = (int(round(pa[0])), int(round(pa[1])))
        pb_i = (int(round(pb[0])), int(round(pb[1])))
        cv2.line(canvas, pa_i, pb_i, color, 1, cv2.LINE_AA)
        cv2.circle(canvas, pa_i, 3, color, 1, cv2.LINE_AA)
        cv2.circle(canvas, pb_i, 3, color, 1, cv2.LINE_AA)
    cv2.putText(
        canvas,
        f"{len(pairs)} inlier matches" if mask is not None else f"{len(pairs)} matches",
        (8, 24),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.7,
        (255, 255, 0),
        2,
        cv2.LINE_AA,
    )
    ok, png = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode the match picture as PNG")
    return png.tobytes()
