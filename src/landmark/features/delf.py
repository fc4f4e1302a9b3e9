"""DELF local features (Noh et al. 2017; the Stanford GLR19 report §3.1): extraction from a trained
checkpoint (:mod:`landmark.models.delf`, ``landmark train-delf``), ``local.kind=delf``.

A photo is decoded, resized so that its long side is at most ``local.image_size`` (never upscaled:
the *extraction frame* every local kind shares), then run through the frozen backbone's mid-level
stage and the attention head at each scale of an image pyramid (the checkpoint's ``scales``, DELF's
``0.25 ... 1`` by default). Every feature-map location is a keypoint candidate at the centre of its
receptive field: location ``(i, j)`` of an ``h x w`` map of a ``H_s x W_s`` pyramid level covers the
input cell ``[j W_s / w, (j + 1) W_s / w)``, whose centre is mapped back to the frame by the level's
scale. The ``max_keypoints`` candidates with the highest attention over all levels are kept, highest
first. Their features are L2-normalised, projected by the checkpoint's PCA (whitened, learned on
training photos' selected features) and L2-normalised again.

Stored as the other kinds are (:mod:`landmark.index.local`): keypoints N x 4 float16 (x, y, size =
the cell's side in frame pixels, angle 0), descriptors N x D uint8 holding ``round(250 d) + 128`` -
exactly the int8 quantisation :func:`landmark.retrieval.matching.prepare` matches float descriptors
with (:func:`decode_descriptors` gives them back), so a stored DELF descriptor is verified like a
RootSIFT one: mutual nearest neighbours, ratio test, MAGSAC++.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..models.delf import DelfCheckpoint, DelfCheckpointError, DelfNet, load_delf
from ..models.net import file_digest
from ..utils.device import resolve_device
from .config import LocalConfig
from .extract import to_tensor
from .local import LocalFeatures
from .whitening import Whitening, l2n

QUANT = 250.0  # int8 value = round(QUANT * component) of a unit descriptor: RootSIFT and DELF bytes, as matching uses
MIN_SIDE = 16  # pyramid levels whose short side would fall below this many pixels are skipped


def encode_descriptors(d: np.ndarray) -> np.ndarray:
    """Unit rows (components within +-0.508) as uint8 ``round(250 d) + 128`` (clipped to 1..255)."""
    q = np.rint(np.asarray(d, np.float32) * QUANT)
    return (np.clip(q, -127, 127) + 128).astype(np.uint8)


def decode_descriptors(u8: np.ndarray) -> np.ndarray:
    """The float32 descriptors of :func:`encode_descriptors` (to its quantisation)."""
    return ((np.asarray(u8, np.float32) - 128.0) / QUANT).astype(np.float32)


def pca_from(state: dict[str, Any]) -> Whitening:
    """The checkpoint's PCA as a :class:`~landmark.features.whitening.Whitening`."""
    return Whitening(
        np.asarray(state["mean"], np.float64),
        np.asarray(state["projection"], np.float64),
        np.asarray(state["eigenvalues"], np.float64),
        float(state["power"]),
        float(state["shrinkage"]),
    )


def pca_state(w: Whitening) -> dict[str, Any]:
    """A :class:`Whitening` as checkpoint values (tensors and floats: ``weights_only`` loadable)."""
    return {
        "mean": torch.from_numpy(w.mean.copy()),
        "projection": torch.from_numpy(w.projection.copy()),
        "eigenvalues": torch.from_numpy(w.eigenvalues.copy()),
        "power": float(w.power),
        "shrinkage": float(w.shrinkage),
    }


def pca_project(w: Whitening, x: np.ndarray) -> np.ndarray:
    """``(x - mean) P^T`` without the re-normalisation of :meth:`Whitening.apply`."""
    return ((np.asarray(x, np.float64) - w.mean) @ w.projection.T).astype(np.float32)


def pca_reconstruct(w: Whitening, y: np.ndarray) -> np.ndarray:
    """Back from :func:`pca_project` (exact when every dimension is kept)."""
    return (np.asarray(y, np.float64) @ np.linalg.pinv(w.projection).T + w.mean).astype(np.float32)


def frame_of(image: Image.Image, image_size: int) -> tuple[Image.Image, float]:
    """The RGB extraction frame (long side at most ``image_size``, never upscaled) and its scale."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    scale = min(1.0, float(image_size) / max(w, h))
    if scale < 1.0:
        rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return rgb, scale


def cell_centres(h: int, w: int, level_w: int, level_h: int, level_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame-pixel centres (x, y) of the receptive fields of an ``h x w`` map of a ``level_w x level_h`` level."""
    xs = ((np.arange(w) + 0.5) * level_w / w) / level_scale - 0.5
    ys = ((np.arange(h) + 0.5) * level_h / h) / level_scale - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return gx.ravel().astype(np.float32), gy.ravel().astype(np.float32)


@dataclass
class Candidates:
    """Keypoint candidates of one photo over the pyramid, highest attention first."""

    xy: np.ndarray  # N x 2 float32, frame pixels
    size: np.ndarray  # N float32: the cell's side in frame pixels
    scores: np.ndarray  # N float32 attention
    features: np.ndarray  # N x C float32 raw features


def select_top(parts: list[Candidates], k: int) -> Candidates:
    """The ``k`` candidates with the highest attention over ``parts`` (stable, highest first)."""
    if not parts:
        return Candidates(
            np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
        )
    scores = np.concatenate([p.scores for p in parts])
    order = np.argsort(-scores, kind="stable")[:k]
    return Candidates(
        np.concatenate([p.xy for p in parts])[order],
        np.concatenate([p.size for p in parts])[order],
        scores[order],
        np.concatenate([p.features for p in parts])[order],
    )


class DelfExtractor:
    """DELF keypoints and descriptors of photos (``local.kind=delf``, ``local.checkpoint``)."""

    def __init__(
        self, cfg: LocalConfig, ckpt: DelfCheckpoint | None = None, *, device: str = "cpu", net: DelfNet | None = None
    ):
        self.cfg = cfg
        self.ckpt = ckpt or load_delf(cfg.checkpoint)
        self.device = resolve_device(device)
        self.net = (net or self.ckpt.build()).to(self.device).eval()
        self.pca = pca_from(self.ckpt.pca)
        prep = self.net.backbone.preprocessing
        self._mean = torch.tensor(prep.mean).view(3, 1, 1)
        self._std = torch.tensor(prep.std).view(3, 1, 1)

    @staticmethod
    def signature(cfg: LocalConfig) -> dict[str, Any]:
        """What determines the stored features: the checkpoint (path, to extract queries alike, and digest)."""
        path = Path(cfg.checkpoint) if cfg.checkpoint else None
        if path is None or not path.is_file():
            load_delf(cfg.checkpoint)  # raises the error that says what is missing
            raise DelfCheckpointError(f"DELF checkpoint {cfg.checkpoint} does not exist")  # not reached
        return {
            "kind": "delf",
            "image_size": int(cfg.image_size),
            "max_keypoints": int(cfg.max_keypoints),
            "checkpoint": str(path.resolve()),
            "digest": file_digest(path),
        }

    @torch.no_grad()
    def candidates(self, frame: Image.Image) -> list[Candidates]:
        """Every location of every pyramid level of an RGB frame, per level, highest attention first."""
        w, h = frame.size
        out = []
        for s in self.ckpt.scales:
            lw, lh = max(1, round(w * s)), max(1, round(h * s))
            if min(lw, lh) < MIN_SIDE:
                continue
            x = to_tensor(frame, (lh, lw), self._mean, self._std)[None].to(self.device)
            feats, scores = self.net(x)
            fh, fw = feats.shape[-2:]
            f = feats[0].flatten(1).T.float().cpu().numpy()
            a = scores[0, 0].flatten().float().cpu().numpy()
            keep = np.argsort(-a, kind="stable")[: int(self.cfg.max_keypoints)]
            cx, cy = cell_centres(fh, fw, lw, lh, lw / w)
            side = np.full(len(keep), (lw / fw) / (lw / w), np.float32)
            out.append(Candidates(np.stack([cx, cy], 1)[keep], side, a[keep], f[keep]))
        return out

    def extract_with_scores(self, image: Image.Image | np.ndarray) -> tuple[LocalFeatures, np.ndarray]:
        """The photo's :class:`LocalFeatures` (highest attention first) and each keypoint's attention."""
        img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        frame, scale = frame_of(img, self.cfg.image_size)
        top = select_top(self.candidates(frame), int(self.cfg.max_keypoints))
        kp = np.zeros((len(top.scores), 4), np.float32)
        kp[:, :2], kp[:, 2] = top.xy, top.size
        if len(top.scores):
            desc = encode_descriptors(self.pca.apply(l2n(top.features)))
        else:
            desc = np.zeros((0, self.pca.out_dim), np.uint8)
        return LocalFeatures(kp.astype(np.float16), desc, scale, frame.size[0], frame.size[1]), top.scores

    def extract_image(self, image: Image.Image | np.ndarray) -> LocalFeatures:
        return self.extract_with_scores(image)[0]
