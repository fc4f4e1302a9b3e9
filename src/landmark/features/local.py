"""Local features: RootSIFT (OpenCV SIFT, L1-normalised, square-rooted), affine-covariant RootSIFT,
ORB or BRISK keypoints, or learned ones: ALIKED, DISK, XFeat (:mod:`landmark.features.learned`).

The Baidu GLR19 solution (§2.1.2) chose SURF and Hessian-Affine RootSIFT for their robustness to
scale and viewpoint; neither is in OpenCV's main modules (SURF is in the non-free contrib build).
``affine_rootsift`` reaches affine covariance the way ASIFT does (OpenCV's ``AffineFeature``): SIFT
runs on simulated tilts and rotations of the photo and its keypoints are mapped back, so that a
facade seen at a grazing angle still matches a frontal photo.

Photos are decoded safely (:func:`landmark.data.load_image`), converted to grey and resized so that
their long side is at most ``image_size`` (never upscaled); keypoints are kept in that *extraction
frame* with ``scale`` = extraction pixels per original pixel, so they map back onto the photo.

What is kept per photo (compact, see :mod:`landmark.index.local`):

- ``keypoints``: N x 4 float16 - x, y, size (diameter in px), angle (degrees);
- ``descriptors``: N x 128 uint8 raw SIFT (exact; RootSIFT is computed from them by
  :func:`rootsift`), or N x 32 / N x 64 uint8 packed binary ORB / BRISK strings, or N x 128 / N x 64
  float16 unit vectors of a learned kind (whose keypoints are x, y, detection score, 0).

:class:`LocalExtractor` extracts many photos in worker processes with a progress bar (learned kinds:
in this process, photos of one size batched through the network on ``local.device``); a photo that
cannot be read is reported as a :class:`~landmark.features.Failure` and skipped.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from ..data.images import ImageError, load_image
from ..utils.device import resolve_device
from ..utils.progress import progress_bar
from .config import LOCAL_KINDS as KINDS
from .config import LOCAL_MODELS, LocalConfig
from .extract import Failure, PhotoItem
from .learned import DESCRIPTOR_DIMS, LEARNED_KINDS, LearnedNet, model_name, to_arrays

log = logging.getLogger(__name__)

BINARY_KINDS = ("orb", "brisk")
AFFINE_MAX_TILT = 3  # affine_rootsift: tilts 1, sqrt 2, 2, 2 sqrt 2 (ASIFT goes to 5, 1.6x slower)


@dataclass
class LocalFeatures:
    """Keypoints and descriptors of one photo, in its extraction frame."""

    keypoints: np.ndarray  # N x 4 float16: x, y, size, angle (learned kinds: x, y, score, 0)
    descriptors: np.ndarray  # N x D uint8 (learned kinds: float16)
    scale: float = 1.0  # extraction-frame pixels per original pixel (<= 1)
    width: int = 0  # the extraction frame's size in pixels
    height: int = 0

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def xy(self) -> np.ndarray:
        """N x 2 float32 keypoint positions in the extraction frame."""
        return self.keypoints[:, :2].astype(np.float32)


def rootsift(descriptors: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, then square root; rows have unit L2 norm."""
    d = np.asarray(descriptors, dtype=np.float32)
    d = d / (np.abs(d).sum(axis=1, keepdims=True) + eps)
    return np.sqrt(np.maximum(d, 0.0))


def local_signature(cfg: LocalConfig) -> dict[str, Any]:
    """What determines stored local features: a store refuses queries extracted otherwise."""
    if cfg.kind in LOCAL_MODELS:  # a trained network (delf): its checkpoint is part of it
        return LOCAL_MODELS[cfg.kind].signature(cfg)
    sig = {"kind": cfg.kind, "image_size": int(cfg.image_size), "max_keypoints": int(cfg.max_keypoints)}
    if cfg.kind in LEARNED_KINDS:
        return {**sig, "model": model_name(cfg.kind, cfg.model)}
    return {**sig, "opencv": cv2.__version__.split(".")[0]}


def _brisk(cfg: LocalConfig) -> Any:
    make = getattr(cv2, "BRISK_create", None) or getattr(getattr(cv2, "BRISK", None), "create", None)
    if make is None:  # OpenCV 5 moved BRISK out of the main modules
        raise ValueError(f"local feature kind 'brisk' is not in this OpenCV build ({cv2.__version__}); use orb")
    return make()


# local.kind -> the OpenCV detector it extracts with (learned kinds: features/learned.py; delf: LOCAL_MODELS)
OPENCV_DETECTORS: dict[str, Callable[[LocalConfig], Any]] = {
    "rootsift": lambda cfg: cv2.SIFT.create(nfeatures=int(cfg.max_keypoints)),
    # the strongest max_keypoints over all simulated views are kept by detect()
    "affine_rootsift": lambda cfg: cv2.AffineFeature.create(
        cv2.SIFT.create(nfeatures=int(cfg.max_keypoints)), maxTilt=AFFINE_MAX_TILT
    ),
    "orb": lambda cfg: cv2.ORB.create(nfeatures=int(cfg.max_keypoints)),
    "brisk": _brisk,
}


def _detector(cfg: LocalConfig) -> Any:
    if cfg.kind in LOCAL_MODELS:
        return LOCAL_MODELS[cfg.kind](cfg)
    if cfg.kind in OPENCV_DETECTORS:
        return OPENCV_DETECTORS[cfg.kind](cfg)
    raise ValueError(f"unknown local feature kind {cfg.kind!r}; choose one of {KINDS}")


def descriptor_size(kind: str) -> int:
    return {"rootsift": 128, "affine_rootsift": 128, "orb": 32, "brisk": 64, **DESCRIPTOR_DIMS}[kind]


def extraction_frame(
    image: Image.Image | np.ndarray, image_size: int, *, color: bool = False
) -> tuple[np.ndarray, float]:
    """Grey (``color``: RGB) uint8 array of ``image`` with its long side at most ``image_size``, and the scale
    applied."""
    if color:
        gray = (
            np.asarray(image.convert("RGB"))
            if isinstance(image, Image.Image)
            else (image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))
        )
    elif isinstance(image, Image.Image):
        gray = np.asarray(image.convert("L"))
    else:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape[:2]
    scale = min(1.0, float(image_size) / max(h, w))
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray), scale


def detect(gray: np.ndarray, cfg: LocalConfig, detector=None) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N x 4 float16) and uint8 descriptors of a grey image, strongest first, at most ``max_keypoints``."""
    detector = detector or _detector(cfg)
    kps, desc = detector.detectAndCompute(gray, None)
    d = descriptor_size(cfg.kind)
    if desc is None or not kps:
        return np.zeros((0, 4), np.float16), np.zeros((0, d), np.uint8)
    resp = np.array([k.response for k in kps], np.float32)
    order = np.argsort(-resp, kind="stable")[: int(cfg.max_keypoints)]
    kp = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in kps], np.float32)[order]
    desc = desc[order]
    if desc.dtype != np.uint8:  # SIFT returns integer-valued floats in [0, 255]
        desc = np.clip(np.rint(desc), 0, 255).astype(np.uint8)
    return kp.astype(np.float16), np.ascontiguousarray(desc)


def extract_image(image: Image.Image | np.ndarray, cfg: LocalConfig, detector=None) -> LocalFeatures:
    if cfg.kind in LOCAL_MODELS:  # a trained network makes the whole LocalFeatures (features/delf.py)
        return (detector or _detector(cfg)).extract_image(image)
    gray, scale = extraction_frame(image, cfg.image_size)
    kp, desc = detect(gray, cfg, detector)
    return LocalFeatures(kp, desc, scale, gray.shape[1], gray.shape[0])


# -- worker processes ----------------------------------------------------------------------------
_W: dict[str, Any] = {}


def _init_worker(cfg: LocalConfig, detector=None) -> None:
    cv2.setNumThreads(1)
    _W["cfg"] = cfg
    _W["det"] = detector or _detector(cfg)


def _work(job: tuple[str, str]) -> tuple[str, str, LocalFeatures | None, str | None]:
    key, path = job
    cfg = _W["cfg"]
    try:
        img = load_image(path, draft_size=cfg.image_size)
        return key, path, extract_image(img, cfg, _W["det"]), None
    except ImageError as exc:
        return key, path, None, exc.reason
    except cv2.error as exc:  # a photo OpenCV cannot process
        return key, path, None, f"OpenCV failed on it: {str(exc).strip().splitlines()[-1]}"


class LearnedExtractor:
    """A learned kind's network on its device, run on batches of photos of one extraction size."""

    def __init__(self, cfg: LocalConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.net = LearnedNet(cfg.kind, cfg.max_keypoints, cfg.model).to(self.device)

    def frame(self, image: Image.Image | np.ndarray) -> tuple[np.ndarray, float]:
        return extraction_frame(image, self.cfg.image_size, color=True)

    def extract_frames(self, frames: Sequence[np.ndarray], scales: Sequence[float]) -> list[LocalFeatures]:
        """Features of RGB frames of one size, in one forward pass."""
        batch = torch.from_numpy(np.stack(frames)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        out = []
        for det, frame, scale in zip(self.net(batch), frames, scales):
            kp, desc = to_arrays(det)
            out.append(LocalFeatures(kp, desc, scale, frame.shape[1], frame.shape[0]))
        return out

    def extract_image(self, image: Image.Image | np.ndarray) -> LocalFeatures:
        frame, scale = self.frame(image)
        return self.extract_frames([frame], [scale])[0]

    def iter_extract(
        self, jobs: Sequence[tuple[str, str]]
    ) -> Iterator[tuple[str, str, LocalFeatures | None, str | None]]:
        """``(key, path, features, None)`` or ``(key, path, None, reason)``; decoding runs in threads beside the
        network."""

        def load(job: tuple[str, str]) -> tuple[str, str, np.ndarray | None, float, str | None]:
            try:
                frame, scale = self.frame(load_image(job[1], draft_size=self.cfg.image_size))
                return job[0], job[1], frame, scale, None
            except ImageError as exc:
                return job[0], job[1], None, 0.0, exc.reason

        groups: dict[tuple[int, ...], list[tuple[str, str, np.ndarray, float]]] = {}

        def flush(shape: tuple[int, ...]) -> Iterator[tuple[str, str, LocalFeatures | None, str | None]]:
            group = groups.pop(shape)
            feats = self.extract_frames([g[2] for g in group], [g[3] for g in group])
            for (key, path, _, _), f in zip(group, feats):
                yield key, path, f, None

        with ThreadPoolExecutor(max(1, int(self.cfg.num_workers))) as pool:
            for key, path, frame, scale, reason in pool.map(load, jobs):
                if frame is None:
                    yield key, path, None, reason
                    continue
                groups.setdefault(frame.shape, []).append((key, path, frame, scale))
                if len(groups[frame.shape]) >= int(self.cfg.batch_size):
                    yield from flush(frame.shape)
        for shape in list(groups):
            yield from flush(shape)


class LocalExtractor:
    """Extracts :class:`LocalFeatures` of photos (paths or images) with one configuration."""

    def __init__(self, cfg: LocalConfig | None = None):
        self.cfg = cfg or LocalConfig()
        if self.cfg.kind not in KINDS:
            raise ValueError(f"unknown local feature kind {self.cfg.kind!r}; choose one of {KINDS}")
        if self.cfg.kind in LEARNED_KINDS:
            model_name(self.cfg.kind, self.cfg.model)  # an unknown variant fails here, before any work
        self._det = _detector(self.cfg) if self.cfg.kind in LOCAL_MODELS else None  # a missing checkpoint fails here
        self._learned: LearnedExtractor | None = None

    @property
    def signature(self) -> dict[str, Any]:
        return local_signature(self.cfg)

    @property
    def learned(self) -> LearnedExtractor:
        """The network of a learned kind (loaded on first use)."""
        if self._learned is None:
            self._learned = LearnedExtractor(self.cfg)
        return self._learned

    def extract_image(self, image: Image.Image | np.ndarray) -> LocalFeatures:
        if self.cfg.kind in LEARNED_KINDS:
            return self.learned.extract_image(image)
        if self._det is None:
            self._det = _detector(self.cfg)
        return extract_image(image, self.cfg, self._det)

    def extract_path(self, path: str | Path) -> LocalFeatures:
        """One photo from disk (raises :class:`~landmark.data.ImageError`)."""
        return self.extract_image(load_image(path, draft_size=self.cfg.image_size))

    def iter_extract(
        self, items: Sequence[PhotoItem], *, progress: bool | None = None, description: str = "local features"
    ) -> Iterator[tuple[str, LocalFeatures | None, Failure | None]]:
        """Yield ``(id, features, None)`` or ``(id, None, failure)`` for each photo, in completion order."""
        jobs = [(it.id, str(it.path)) for it in items]
        workers = int(self.cfg.num_workers)
        with progress_bar(description, total=len(jobs), enabled=progress) as bar:
            for key, path, feats, reason in self._map(jobs, workers):
                bar.advance(1)
                if feats is None:
                    log.info("skipped %s: %s", path, reason)
                    yield key, None, Failure(key, path, reason or "unknown error")
                else:
                    yield key, feats, None

    def _map(
        self, jobs: list[tuple[str, str]], workers: int
    ) -> Iterable[tuple[str, str, LocalFeatures | None, str | None]]:
        if self.cfg.kind in LEARNED_KINDS:
            yield from self.learned.iter_extract(jobs)
            return
        if workers <= 0 or len(jobs) < 8 or self.cfg.kind in LOCAL_MODELS:  # a network runs here, on torch's threads
            _init_worker(self.cfg, self._det)
            yield from map(_work, jobs)
            return
        ctx = mp.get_context("spawn")  # no fork under a multi-threaded torch parent
        with ctx.Pool(min(workers, os.cpu_count() or 1), initializer=_init_worker, initargs=(self.cfg,)) as pool:
            yield from pool.imap_unordered(_work, jobs, chunksize=4)


def extract_many(
    extractor: LocalExtractor,
    items: Sequence[PhotoItem],
    sink: Callable[[list[str], list[LocalFeatures]], object],  # its result (e.g. a count) is unused
    *,
    chunk: int = 256,
    progress: bool | None = None,
    description: str = "local features",
) -> list[Failure]:
    """Extract ``items`` and hand them to ``sink`` in chunks (each chunk is one atomic write there)."""
    keys: list[str] = []
    feats: list[LocalFeatures] = []
    failures: list[Failure] = []
    for key, f, failure in extractor.iter_extract(items, progress=progress, description=description):
        if failure is not None:
            failures.append(failure)
            continue
        assert f is not None  # iter_extract gives features exactly when there is no failure
        keys.append(key)
        feats.append(f)
        if len(keys) >= chunk:
            sink(keys, feats)
            keys, feats = [], []
    if keys:
        sink(keys, feats)
    return failures
