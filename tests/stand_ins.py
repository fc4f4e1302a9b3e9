"""A stand-in for the store's network, so that tests of building, the CLI and the service make and open
real stores (SQLite, FAISS, local features) in milliseconds: each photo's vector is a function of its bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

import landmark.pipeline.context as context
import landmark.pipeline.stores as stores
from landmark.data import ImageError, load_image
from landmark.features import ExtractionResult
from landmark.features.extract import Failure

DIM = 8
LONG_IDS = [f"{i:02d}6ce828a384acbc8d9e0f1234567890abcdef0123456789" for i in range(6)]  # names a table would cut


def unit_of(data: bytes) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(data).digest()[:4], "little")
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class ContentExtractor:
    """A stand-in extractor: each photo's vector is a function of its file's bytes; records what it read."""

    def __init__(self):
        self.dim = DIM
        self.read: list[str] = []

    @property
    def signature(self):
        return {"model": {"backbone": "content-test"}, "dim": DIM}

    @staticmethod
    def vector(path) -> np.ndarray:
        return unit_of(Path(path).read_bytes())

    def extract_images(self, images) -> np.ndarray:
        """In-memory photos (the service's uploads): a function of their pixels."""
        return np.stack([unit_of(im.tobytes()) for im in images]) if images else np.zeros((0, DIM), np.float32)

    def extract_images_with_probe(self, images, regions=1):
        return self.extract_images(images), {}

    def extract(self, items, **kw) -> ExtractionResult:
        """Vectors of the photos that decode; the others are failures, as the network's extractor has them."""
        self.read += [it.id for it in items]
        ok, failures = [], []
        for it in items:
            try:
                load_image(it.path)
            except ImageError as exc:
                failures.append(Failure(it.id, str(it.path), exc.reason))
            else:
                ok.append(it)
        return ExtractionResult(
            [it.id for it in ok],
            np.stack([self.vector(it.path) for it in ok]) if ok else np.zeros((0, DIM), np.float32),
            failures,
        )


def use_content_extractor(monkeypatch) -> ContentExtractor:
    """Stores made, built and opened from now on (this test) use a :class:`ContentExtractor`; no
    ImageNet head gives them an object prior."""
    fake = ContentExtractor()
    monkeypatch.setattr(stores, "build_extractor", lambda *a, **kw: fake)
    for module in (stores, context):
        monkeypatch.setattr(module, "attach_prior", lambda *a, **kw: None)
    monkeypatch.setattr(context, "prior_source", lambda extractor: "own")
    return fake


def noise_photos(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    """Photos of random texture (SIFT finds keypoints on them), one per name, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        paths.append(folder / name)
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(paths[-1], format="PNG")
    return paths
