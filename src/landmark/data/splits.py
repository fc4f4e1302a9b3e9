"""Held-out photos: a deterministic per-landmark split of labelled photos (training's validation,
calibration's and pseudo-labelling's held-out queries)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .manifests import DatasetError, ImageRecord


@dataclass
class Split:
    """Training and validation photos, and the class index of every kept landmark."""

    train: list[ImageRecord]
    val: list[ImageRecord]
    classes: list[int]  # class index -> landmark_id

    @property
    def class_of(self) -> dict[int, int]:
        return {lab: i for i, lab in enumerate(self.classes)}

    def labels(self, records: Sequence[ImageRecord]) -> list[int]:
        cmap = self.class_of
        out = []
        for r in records:
            assert r.landmark_id is not None  # a split holds labelled photos
            out.append(cmap[r.landmark_id])
        return out


def split_by_photo(records: Sequence[ImageRecord], val_fraction: float, min_per_class: int = 1, seed: int = 0) -> Split:
    """Hold out ``val_fraction`` of each class's photos (at least one where a class keeps two for training).

    Classes with fewer than ``min_per_class`` labelled photos are dropped. Deterministic for a seed.
    """
    by_class: dict[int, list[ImageRecord]] = defaultdict(list)
    for r in records:
        if r.landmark_id is not None:
            by_class[r.landmark_id].append(r)
    rng = random.Random(seed)
    train, val, classes = [], [], []
    for lab in sorted(by_class):
        photos = sorted(by_class[lab], key=lambda r: r.id)
        if len(photos) < min_per_class:
            continue
        rng.shuffle(photos)
        n_val = int(round(len(photos) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(photos) >= 3:
            n_val = 1
        val += photos[:n_val]
        train += photos[n_val:]
        classes.append(lab)
    if not classes:
        raise DatasetError(f"no landmark has at least {min_per_class} labelled photos")
    return Split(train, val, classes)
