"""Batched global-descriptor extraction with aspect-ratio buckets, multi-scale, flips and resume.

Photos are resized so their long side is ``image_size`` and their short side a multiple of
``size_multiple``; photos of equal resized shape share a batch, so nothing is padded or cropped.
Decoding runs in DataLoader workers beside the forward pass. A photo that cannot be read is
reported (id, path, reason) and skipped. With ``cache_dir``, finished chunks are written
atomically and a re-run continues where a killed one stopped.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..data.images import ImageError, load_image, probe_size
from ..models import functional as LF
from ..models.config import ModelConfig
from ..models.net import DescriptorNet, build_model, file_digest
from ..utils.config import to_dict
from ..utils.device import resolve_device, tune_cpu_allocator
from ..utils.io import atomic_path, atomic_write_json
from ..utils.progress import progress_bar
from .config import ExtractConfig, FeatureSettings
from .engine import TrunkRunner

log = logging.getLogger(__name__)


class PhotoItem(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def path(self) -> Path: ...


@dataclass(frozen=True)
class Failure:
    """A photo that was skipped, and why."""

    id: str
    path: str
    reason: str


@dataclass
class ExtractionResult:
    ids: list[str]
    vectors: np.ndarray  # N x D float32, rows L2-normalised
    failures: list[Failure] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (width, height) of the photo
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # probe name -> N x G rows aligned with ids


REGIONS_EXTRA = "regions"  # extras key of the regional descriptors (``regions`` levels > 1): N x R x dim, float16

# A probe maps the backbone's feature map (B x C x H x W) to a few numbers per photo (B x G), computed in the
# same forward pass as the descriptor, e.g. the ImageNet class-group probabilities of the object prior. A
# probe with an integer ``tap`` attribute is given the input of that backbone stage instead.
Probe = Callable[[torch.Tensor], torch.Tensor]


class _Photos(Dataset):
    """Decodes photo ``i`` straight to its bucket's shape, as a normalised tensor."""

    def __init__(self, paths: Sequence[str], shapes: Sequence[tuple[int, int]], mean, std):
        self.paths, self.shapes = paths, shapes
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        h, w = self.shapes[i]
        try:
            img = load_image(self.paths[i], draft_size=max(h, w))
        except ImageError as exc:
            return i, None, exc.reason
        return i, to_tensor(img, (h, w), self.mean, self.std), None


def to_tensor(img: Image.Image, shape: tuple[int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Resize an RGB image to ``shape`` (h, w) and normalise it to a ``3 x h x w`` float tensor."""
    h, w = shape
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    return (arr - mean) / std


def _collate(batch):
    ok = [(i, t) for i, t, _ in batch if t is not None]
    bad = [(i, r) for i, t, r in batch if t is None]
    if ok:
        return [i for i, _ in ok], torch.stack([t for _, t in ok]), bad
    return [], None, bad


def decode_workers(requested: int, device: torch.device) -> int:
    """Decoding processes for ``extract.num_workers`` (-1 = auto, see :class:`ExtractConfig`)."""
    if requested >= 0:
        return requested
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        return 0 if cores <= 4 else 1
    return min(4, max(0, cores - 1))


def bucket_batches(shapes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Group indices of equal shape into batches of at most ``batch_size``, in first-seen order."""
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(shapes):
        buckets[s].append(i)
    batches = [idx[j : j + batch_size] for idx in buckets.values() for j in range(0, len(idx), batch_size)]
    return sorted(batches, key=lambda b: b[0])


class GlobalExtractor:
    """Turns photos into L2-normalised global descriptors with one :class:`DescriptorNet`."""

    def __init__(
        self,
        net: DescriptorNet,
        cfg: ExtractConfig,
        model_cfg: ModelConfig | None = None,
        device: str | torch.device | None = None,
        engine_dir: str | Path | None = None,
    ):
        self.cfg = cfg
        self.model_cfg = model_cfg or ModelConfig()
        self.device = resolve_device(device if device is not None else cfg.device)
        if self.device.type == "cpu":
            tune_cpu_allocator()
        # channels-last convolutions are ~1.7x faster on CPU (oneDNN) and preferred by tensor cores
        # torch's overloads of Module.to omit (device, memory_format=...), which it accepts
        self.net = net.eval().to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        # the backbone runs on cfg.engine (made at first use; its graph kept in engine_dir, e.g. a store's)
        self.trunk = TrunkRunner(
            self.net.backbone, cfg.engine, self.device, engine_dir, batch_size=cfg.batch_size, image_size=cfg.image_size
        )
        prep = net.preprocessing
        self.mean = torch.tensor(prep.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(prep.std, dtype=torch.float32).view(3, 1, 1)
        self.probe_name: str | None = None
        self.probe: Probe | None = None

    def set_probe(self, name: str | None, probe: Probe | None) -> None:
        """Also compute ``probe(feature map)`` for every photo, returned as ``ExtractionResult.extras[name]``."""
        self.probe_name, self.probe = (name, probe) if probe is not None else (None, None)

    @classmethod
    def from_config(
        cls, config: FeatureSettings, device: str | None = None, engine_dir: str | Path | None = None
    ) -> GlobalExtractor:
        return cls(build_model(config.model), config.extract, config.model, device=device, engine_dir=engine_dir)

    @property
    def dim(self) -> int:
        return self.net.dim

    @property
    def signature(self) -> dict[str, Any]:
        """What determines the vectors: a store refuses queries whose signature differs."""
        model = to_dict(self.model_cfg)
        if model.get("checkpoint"):
            model["checkpoint"] = file_digest(model["checkpoint"])
        ex = self.cfg
        return {
            "model": model,
            "dim": self.dim,
            "extract": {
                "image_size": ex.image_size,
                "size_multiple": ex.size_multiple,
                "scales": list(ex.scales),
                "flip": ex.flip,
            },
        }

    def target_shape(self, width: int, height: int) -> tuple[int, int]:
        return LF.target_shape(height, width, self.cfg.image_size, self.cfg.size_multiple)

    def embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Descriptors of a normalised batch at the base scale, averaged over scales and flips."""
        return self.embed_views(batch)[0]

    def embed_batch_with_probe(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Descriptors and (if a probe is set) probe outputs of a batch, both averaged over scales and flips."""
        return self.embed_views(batch)[:2]

    @torch.inference_mode()
    def embed_views(
        self, batch: torch.Tensor, regions: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Descriptors, probe outputs (or None) and, with ``regions`` > 1, the regional descriptors
        (``B x R x dim``, :meth:`DescriptorNet.regional`) of a batch. Descriptors and probe outputs
        are averaged over scales and flips; the regions come from the unflipped view at the scale
        nearest 1, in the same forward pass."""
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        h, w = batch.shape[-2:]
        total: torch.Tensor | None = None
        probed: torch.Tensor | None = None
        regional: torch.Tensor | None = None
        amp = self.cfg.amp and self.device.type == "cuda"
        tap = getattr(self.probe, "tap", None)
        taps = tuple(sorted(set(self.net.taps) | ({tap} if tap is not None else set())))  # one pass serves all
        net_at = [taps.index(t) for t in self.net.taps]
        base = min(self.cfg.scales, key=lambda s: abs(s - 1.0))
        for s in self.cfg.scales:
            x = (
                batch
                if s == 1.0
                else F.interpolate(
                    batch,
                    size=LF.target_shape(
                        h, w, max(self.cfg.size_multiple, round(max(h, w) * s)), self.cfg.size_multiple
                    ),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
            )
            views = [x, torch.flip(x, dims=[-1])] if self.cfg.flip else [x]
            for i, v in enumerate(views):
                with_regions = regions > 1 and s == base and i == 0
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=amp):
                    # one pass over the trunk serves the descriptor, the probe and the regions
                    *tapped, fmap = self.trunk(v, taps)
                    mine = [tapped[i] for i in net_at]
                    d = self.net.describe(fmap, mine).float()
                    if self.probe is not None:
                        p = self.probe(tapped[taps.index(tap)] if tap is not None else fmap).float()
                        probed = p if probed is None else probed + p
                    if with_regions:
                        regional = self.net.regional(fmap, regions, mine).float()
                total = d if total is None else total + d
        n_views = len(self.cfg.scales) * (2 if self.cfg.flip else 1)
        assert total is not None  # scales is not empty (min above)
        return LF.l2n(total), (probed / n_views if probed is not None else None), regional

    def extract_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Descriptors of in-memory RGB images (one forward each; for uploads and small sets)."""
        return self.extract_images_with_probe(images)[0]

    def extract_images_with_probe(
        self, images: Sequence[Image.Image], regions: int = 1
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Descriptors of in-memory RGB images and their extras: the probe's outputs, and with
        ``regions`` > 1 the regional descriptors (``REGIONS_EXTRA``); ``{}`` with neither."""
        out, probed, regional = [], [], []
        for img in images:
            w, h = img.size
            t = to_tensor(img.convert("RGB"), self.target_shape(w, h), self.mean, self.std)
            d, p, r = self.embed_views(t.unsqueeze(0), regions)
            out.append(d.cpu().numpy())
            if p is not None:
                probed.append(p.cpu().numpy())
            if r is not None:
                regional.append(r.cpu().numpy())
        vecs = np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)
        extras = {self.probe_name: np.concatenate(probed).astype(np.float32)} if probed and self.probe_name else {}
        if regional:
            extras[REGIONS_EXTRA] = np.concatenate(regional).astype(np.float16)
        return vecs, extras

    def extract(
        self,
        items: Sequence[PhotoItem],
        *,
        cache_dir: str | Path | None = None,
        progress: bool | None = None,
        description: str = "extract",
        chunk_size: int = 512,
        regions: int = 1,
    ) -> ExtractionResult:
        """Descriptors of photos on disk, batched by shape; resumable through ``cache_dir``. With
        ``regions`` > 1 the extras also hold the regional descriptors (``REGIONS_EXTRA``)."""
        sig = self.signature | ({"probe": self.probe_name} if self.probe is not None else {})
        if getattr(self.probe, "tap", None) is not None:  # a pretrained tail: other numbers than the own head
            sig["probe_source"] = getattr(self.probe, "source", None)
        if regions > 1:
            sig["regions"] = regions
        cache = _ChunkCache(Path(cache_dir), sig, self.dim) if cache_dir else None
        done_ids, done_vecs, failures, sizes, done_extra = (
            cache.load() if cache else ([], [], [], {}, defaultdict(list))
        )
        skip = set(done_ids) | {f.id for f in failures}
        todo = list({it.id: it for it in reversed(items) if it.id not in skip}.values())[::-1]  # unique ids

        shapes, keep = [], []
        for it in todo:
            try:
                w, h = probe_size(it.path)
            except ImageError as exc:
                failures.append(Failure(it.id, str(it.path), exc.reason))
                continue
            sizes[it.id] = (w, h)
            shapes.append(self.target_shape(w, h))
            keep.append(it)
        new_ids: list[str] = []
        new_vecs: list[np.ndarray] = []
        new_extra: dict[str, list[np.ndarray]] = defaultdict(list)
        new_fail: list[Failure] = []
        pending = 0
        total = len({it.id for it in items})
        with progress_bar(description, total=total, enabled=progress, completed=total - len(todo)) as bar:
            bar.advance(len(todo) - len(keep))
            for idx, vecs, extra, bad in self._run(keep, shapes, regions):
                for i in idx:
                    new_ids.append(keep[i].id)
                new_vecs.append(vecs)
                for name, rows in extra.items():
                    new_extra[name].append(rows)
                for i, reason in bad:
                    new_fail.append(Failure(keep[i].id, str(keep[i].path), reason))
                    log.info("skipped %s: %s", keep[i].path, reason)
                pending += len(idx) + len(bad)
                bar.advance(len(idx) + len(bad))
                if cache and pending >= chunk_size:
                    cache.write(new_ids, new_vecs, new_fail, sizes, new_extra)
                    done_ids += new_ids
                    done_vecs += new_vecs
                    failures += new_fail
                    for name, chunks in new_extra.items():
                        done_extra[name] += chunks
                    new_ids, new_vecs, new_fail, new_extra, pending = [], [], [], defaultdict(list), 0
        if cache and (new_ids or new_fail):
            cache.write(new_ids, new_vecs, new_fail, sizes, new_extra)
        done_ids += new_ids
        done_vecs += new_vecs
        failures += new_fail
        for name, chunks in new_extra.items():
            done_extra[name] += chunks
        # Return in the order the items were given, one row per id.
        order: dict[str, int] = {}
        for n, it in enumerate(items):
            order.setdefault(it.id, n)
        vecs = np.concatenate(done_vecs).astype(np.float32) if done_vecs else np.zeros((0, self.dim), np.float32)
        first: dict[str, int] = {}
        for j, k in enumerate(done_ids):
            first.setdefault(k, j)
        perm = sorted(first.values(), key=lambda j: order.get(done_ids[j], len(order)))
        extras = {}
        wanted = ([(_PROBE_KEY, self.probe_name)] if self.probe is not None and self.probe_name else []) + (
            [(REGIONS_EXTRA, REGIONS_EXTRA)] if regions > 1 else []
        )
        for key, name in wanted:
            dtype = np.float16 if key == REGIONS_EXTRA else np.float32  # 13 regions a photo: half the memory
            rows = (
                np.concatenate(done_extra[key]).astype(dtype, copy=False)
                if done_extra.get(key)
                else np.zeros((0, 0), dtype)
            )
            extras[name] = rows[perm] if len(rows) == len(vecs) else rows[:0]
        return ExtractionResult(
            [done_ids[j] for j in perm], vecs[perm], failures, {k: sizes[k] for k in done_ids if k in sizes}, extras
        )

    def _run(
        self, items: Sequence[PhotoItem], shapes: list[tuple[int, int]], regions: int = 1
    ) -> Iterator[tuple[list[int], np.ndarray, dict[str, np.ndarray], list]]:
        if not items:
            return
        batches = bucket_batches(shapes, self.cfg.batch_size)
        dataset = _Photos(
            [str(it.path) for it in items], shapes, self.net.preprocessing.mean, self.net.preprocessing.std
        )
        workers = decode_workers(self.cfg.num_workers, self.device) if len(batches) > 1 else 0
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )
        for idx, batch, bad in loader:
            extra: dict[str, np.ndarray] = {}
            if batch is None:
                vecs = np.zeros((0, self.dim), np.float32)
            else:
                d, p, r = self.embed_views(batch, regions)
                vecs = d.cpu().numpy()
                if p is not None:
                    extra[_PROBE_KEY] = p.cpu().numpy()
                if r is not None:
                    extra[REGIONS_EXTRA] = r.cpu().numpy().astype(np.float16)
            yield idx, vecs, extra, bad


_PROBE_KEY = "probe"  # the chunk files' name for the probe outputs, whatever the probe is called


class _ChunkCache:
    """Finished extraction chunks on disk: ``signature.json`` + ``chunk-NNNNNN.npz``."""

    def __init__(self, root: Path, signature: dict[str, Any], dim: int):
        self.root, self.dim = root, dim
        root.mkdir(parents=True, exist_ok=True)
        sig_file = root / "signature.json"
        if sig_file.exists():
            if json.loads(sig_file.read_text()) != json.loads(json.dumps(signature)):
                for old in root.glob("chunk-*.npz"):
                    old.unlink()
                log.info("extraction cache %s was made by another model/config: cleared", root)
        atomic_write_json(sig_file, signature)

    def load(
        self,
    ) -> tuple[
        list[str], list[np.ndarray], list[Failure], dict[str, tuple[int, int]], defaultdict[str, list[np.ndarray]]
    ]:
        ids: list[str] = []
        vecs: list[np.ndarray] = []
        failures: list[Failure] = []
        sizes: dict[str, tuple[int, int]] = {}
        extra: defaultdict[str, list[np.ndarray]] = defaultdict(list)
        for path in sorted(self.root.glob("chunk-*.npz")):
            with np.load(path, allow_pickle=False) as z:
                ids += z["ids"].tolist()
                vecs.append(z["vectors"])
                for key in (_PROBE_KEY, REGIONS_EXTRA):
                    if key in z.files and len(z[key]) == len(z["vectors"]):
                        extra[key].append(z[key])
                failures += [Failure(*row) for row in z["failures"].tolist()]
                sizes.update({k: (int(w), int(h)) for k, (w, h) in zip(z["ids"].tolist(), z["sizes"].tolist())})
        return ids, vecs, failures, sizes, extra

    def write(self, ids, vecs, failures, sizes, extra: dict[str, list[np.ndarray]] | None = None) -> None:
        n = len(list(self.root.glob("chunk-*.npz")))
        arrays = {name: np.concatenate(rows) for name, rows in (extra or {}).items() if len(rows)}
        with atomic_path(self.root / f"chunk-{n:06d}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    ids=np.array(ids, dtype=str),
                    vectors=np.concatenate(vecs) if vecs else np.zeros((0, self.dim), np.float32),
                    failures=np.array([[f.id, f.path, f.reason] for f in failures], dtype=str).reshape(-1, 3),
                    sizes=np.array([sizes[i] for i in ids], dtype=np.int64).reshape(-1, 2),
                    **arrays,  # type: ignore[arg-type]  # numpy's stub: **kwds could be allow_pickle
                )
