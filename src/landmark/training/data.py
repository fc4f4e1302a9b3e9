"""Training data: split by photo, class filters, samplers, and augmentation."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2 as T

from ..data import ImageError, ImageRecord, load_image
from .config import SAMPLER_POWERS, TrainDataConfig


class ClassBalancedSampler(Sampler[int]):
    """Draws ``num_samples`` indices per epoch: a class uniformly, then one of its photos uniformly.

    With several processes each rank draws a different stream (seeded by epoch and rank).
    """

    def __init__(
        self,
        labels: Sequence[int],
        num_samples: int | None = None,
        power: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.labels = np.asarray(labels)
        counts = Counter(self.labels.tolist())
        # power 0: every class equally likely (balanced); power -> 1: photos equally likely
        w = np.array([counts[c] ** (power - 1.0) for c in self.labels.tolist()], dtype=np.float64)
        self.weights = w / w.sum()
        self.num_samples = int(math.ceil((num_samples or len(labels)) / world_size))
        self.seed, self.rank, self.epoch = seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        yield from rng.choice(len(self.labels), size=self.num_samples, p=self.weights).tolist()


def make_sampler(
    kind: str, labels: Sequence[int], seed: int, rank: int = 0, world_size: int = 1, num_samples: int | None = None
) -> ClassBalancedSampler:
    """``balanced`` (uniform over classes), ``inverse_freq`` (p ~ n^-1/2 per photo) or ``random``."""
    if kind not in SAMPLER_POWERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {list(SAMPLER_POWERS)}")
    return ClassBalancedSampler(
        labels, num_samples, power=SAMPLER_POWERS[kind], seed=seed, rank=rank, world_size=world_size
    )


def train_transform(cfg: TrainDataConfig, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Random resized crop (aspect jitter 3/4..4/3), [zoom-out onto a mean-colour canvas], flip, colour
    jitter, normalise."""
    ops = [T.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale), antialias=True)]
    if cfg.zoom_out > 1.0 and cfg.zoom_out_p > 0:
        fill = [int(round(255 * m)) for m in mean]
        ops += [
            T.RandomZoomOut(fill=fill, side_range=(1.0, cfg.zoom_out), p=cfg.zoom_out_p),
            T.Resize((cfg.image_size, cfg.image_size), antialias=True),
        ]
    if cfg.flip:
        ops.append(T.RandomHorizontalFlip())
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        ops.append(T.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
    ops += [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]
    return T.Compose(ops)


class AugmentedPhotos(Dataset):
    """``(tensor, class)`` pairs of augmented training crops; unreadable photos give ``None``."""

    def __init__(
        self, records: Sequence[ImageRecord], labels: Sequence[int], transform: T.Compose, draft_size: int | None = None
    ):
        self.records, self.labels, self.transform, self.draft = list(records), list(labels), transform, draft_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.records[i].path, draft_size=self.draft)
        except ImageError:
            return None
        return self.transform(img), self.labels[i]


def collate_skip_none(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    xs, ys = zip(*batch)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)
