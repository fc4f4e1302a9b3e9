"""The extractor a store uses: one model, or several models concatenated, optionally whitened.

* One model (the default) is a plain :class:`GlobalExtractor`, with the same signature as before,
  so stores built before ensembles and whitening existed keep opening.
* ``config.ensemble`` adds models: each model's L2-normalised descriptor is computed, they are
  concatenated and divided by sqrt(#models) (a unit vector again) — :class:`EnsembleExtractor`.
* ``config.whitening.kind = "auto"`` (the default) is PCA where the store learned one (from enough
  photos, see :func:`auto_learns_pca`), else none: :func:`whitening_in_force` says which.
* ``config.whitening.kind = "pca"`` (or ``"learned"``) wraps either in :class:`WhitenedExtractor`,
  which projects with a :class:`~landmark.features.whitening.Whitening` learned on the index split
  (or on the labelled photos, less the validation ones) and kept in the store as ``whitening.npz``;
  its digest is part of the signature. With ``keep_descriptors`` it also returns
  the un-whitened descriptors, as ``extras["descriptor"]``: a trained classifier head reads those.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, overload

import numpy as np
import torch
from PIL import Image

from .config import WHITENING_KINDS, FeatureSettings
from .engine import STORE_ENGINES_DIR
from .extract import REGIONS_EXTRA, ExtractionResult, Failure, GlobalExtractor, PhotoItem
from .whitening import Whitening, WhiteningError, learn_labelled_whitening, learn_whitening

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

WHITENING_FILE = "whitening.npz"
DESCRIPTOR_EXTRA = "descriptor"  # extras key of the un-whitened descriptors (WhitenedExtractor.keep_descriptors)


class Extractor(Protocol):
    """What the API and the store need from an extractor."""

    device: torch.device

    @property
    def dim(self) -> int: ...

    @property
    def signature(self) -> dict[str, Any]: ...

    def extract(
        self,
        items: Sequence[PhotoItem],
        *,
        cache_dir: str | Path | None = None,
        progress: bool | None = None,
        description: str = "extract",
        regions: int = 1,
    ) -> ExtractionResult: ...

    def extract_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def extract_images_with_probe(
        self, images: Sequence[Image.Image], regions: int = 1
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...


class EnsembleExtractor:
    """Several extractors; descriptors concatenated (each L2-normalised) and scaled to unit length."""

    def __init__(self, extractors: Sequence[GlobalExtractor]):
        if len(extractors) < 2:
            raise ValueError("an ensemble needs at least two models")
        self.parts = list(extractors)
        self.device = self.parts[0].device
        self.cfg = self.parts[0].cfg

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)

    @property
    def signature(self) -> dict[str, Any]:
        return {"ensemble": [p.signature for p in self.parts], "dim": self.dim}

    def _combine(self, vectors: Sequence[np.ndarray]) -> np.ndarray:
        """The models' descriptors (``N x d_i``, or regions ``N x R x d_i``) side by side, scaled to unit length."""
        return (np.concatenate(vectors, axis=-1) / np.sqrt(len(vectors))).astype(np.float32)

    def extract(
        self,
        items: Sequence[PhotoItem],
        *,
        cache_dir: str | Path | None = None,
        progress: bool | None = None,
        description: str = "extract",
        **kwargs,
    ) -> ExtractionResult:
        results = []
        for i, part in enumerate(self.parts):
            sub = Path(cache_dir) / f"model-{i}" if cache_dir else None
            results.append(
                part.extract(
                    items,
                    cache_dir=sub,
                    progress=progress,
                    description=f"{description} [{part.model_cfg.backbone}]",
                    **kwargs,
                )
            )
        ok = set(results[0].ids).intersection(*(r.ids for r in results[1:]))
        ids = [i for i in results[0].ids if i in ok]
        vecs, regions = [], []  # each model's rows of the photos all of them read, in one order
        with_regions = (
            all(len(r.extras.get(REGIONS_EXTRA, ())) == len(r.ids) for r in results)
            and REGIONS_EXTRA in results[0].extras
        )
        for r in results:
            pos = {k: j for j, k in enumerate(r.ids)}
            rows = [pos[i] for i in ids]
            vecs.append(r.vectors[rows] if ids else np.zeros((0, r.vectors.shape[1]), np.float32))
            if with_regions:
                regions.append(r.extras[REGIONS_EXTRA][rows])
        failed: dict[str, Failure] = {}
        for r in results:
            for f in r.failures:
                failed.setdefault(f.id, f)
        first = {k: j for j, k in enumerate(results[0].ids)}
        extras = {
            name: rows[[first[i] for i in ids]]
            for name, rows in results[0].extras.items()
            if len(rows) == len(results[0].ids) and name != REGIONS_EXTRA
        }  # probes run on the first model only
        if with_regions:
            extras[REGIONS_EXTRA] = self._combine(regions).astype(np.float16)
        return ExtractionResult(
            ids,
            self._combine(vecs) if ids else np.zeros((0, self.dim), np.float32),
            list(failed.values()),
            {k: v for k, v in results[0].sizes.items() if k in ok},
            extras,
        )

    def extract_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.extract_images_with_probe(images)[0]

    def extract_images_with_probe(
        self, images: Sequence[Image.Image], regions: int = 1
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not images:
            return np.zeros((0, self.dim), np.float32), {}
        outs = [p.extract_images_with_probe(images, regions) for p in self.parts]
        extras = {k: v for k, v in outs[0][1].items() if k != REGIONS_EXTRA}
        if regions > 1:
            extras[REGIONS_EXTRA] = self._combine([e[REGIONS_EXTRA] for _, e in outs]).astype(np.float16)
        return self._combine([v for v, _ in outs]), extras


class WhitenedExtractor:
    """Another extractor followed by a learned PCA(-whitening) projection."""

    def __init__(self, base: Extractor, whitening: Whitening):
        if whitening.in_dim != base.dim:
            raise WhiteningError(f"whitening expects {whitening.in_dim}-d vectors, the extractor makes {base.dim}-d")
        self.base, self.whitening = base, whitening
        self.device = base.device
        self.cfg = getattr(base, "cfg", None)
        self.keep_descriptors = False  # also return the un-whitened descriptors as extras[DESCRIPTOR_EXTRA]

    def _extras(self, extras: dict[str, np.ndarray], vectors: np.ndarray) -> dict[str, np.ndarray]:
        rows = extras.get(REGIONS_EXTRA)
        if rows is not None and rows.ndim == 3:  # regional descriptors live in the store's space too
            n, r, d = rows.shape
            flat = self.whitening.apply(rows.reshape(n * r, d))
            extras = extras | {REGIONS_EXTRA: flat.reshape(n, r, self.dim).astype(rows.dtype)}
        return extras | {DESCRIPTOR_EXTRA: vectors} if self.keep_descriptors else extras

    @property
    def dim(self) -> int:
        return self.whitening.out_dim

    @property
    def signature(self) -> dict[str, Any]:
        return self.base.signature | {"dim": self.dim, "whitening": self.whitening.signature}

    def extract(self, items: Sequence[PhotoItem], **kwargs) -> ExtractionResult:
        res = self.base.extract(items, **kwargs)
        return dataclasses.replace(
            res, vectors=self.whitening.apply(res.vectors), extras=self._extras(res.extras, res.vectors)
        )

    def extract_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.whitening.apply(self.base.extract_images(images))

    def extract_images_with_probe(
        self, images: Sequence[Image.Image], regions: int = 1
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        vecs, extras = self.base.extract_images_with_probe(images, regions)
        return self.whitening.apply(vecs), self._extras(extras, vecs)


@overload
def zoomed(extractor: GlobalExtractor, factor: float) -> GlobalExtractor: ...
@overload
def zoomed(extractor: Extractor, factor: float) -> Extractor: ...
def zoomed(extractor: Extractor, factor: float) -> Extractor:
    """A copy of ``extractor`` that reads photos at ``factor`` times its image size, with the same
    networks and whitening, and no probe (the object prior reads the photo at its own size)."""
    if isinstance(extractor, WhitenedExtractor):
        return WhitenedExtractor(zoomed(extractor.base, factor), extractor.whitening)
    if isinstance(extractor, EnsembleExtractor):
        return EnsembleExtractor([zoomed(p, factor) for p in extractor.parts])
    assert isinstance(extractor, GlobalExtractor)  # the one other kind of extractor
    out = copy.copy(extractor)  # shares the network as it is: nothing is moved or re-set under other threads
    out.cfg = dataclasses.replace(
        extractor.cfg,
        image_size=int(round(extractor.cfg.image_size * factor)),
        batch_size=max(1, int(extractor.cfg.batch_size / factor**2)),
    )  # the same pixels a batch
    out.set_probe(None, None)
    return out


def zoom_views(
    ids: Sequence[str],
    vectors: np.ndarray,
    regions: np.ndarray | None,
    zoom_ids: Sequence[str],
    zoom_vectors: np.ndarray,
    zoom_regions: np.ndarray | None,
) -> np.ndarray:
    """The extra views recognition searches with (``Q x R x dim``, float16): the photos' regions at
    the base size (if any), then the global descriptor and the regions of their zoomed read. A photo
    the zoomed read missed repeats its global descriptor there, which adds nothing to its neighbours."""
    vectors = np.asarray(vectors, np.float32)
    has_regions = regions is not None and np.ndim(regions) == 3 and len(regions) == len(ids)
    # the zoomed read has as many regions as the base one
    width = 1 + (regions.shape[1] if has_regions and regions is not None else 0)
    zoomed_rows = np.asarray(zoom_vectors, np.float32).reshape(len(zoom_ids), 1, vectors.shape[1])
    if has_regions and zoom_regions is not None and np.ndim(zoom_regions) == 3 and len(zoom_regions) == len(zoom_ids):
        zoomed_rows = np.concatenate([zoomed_rows, np.asarray(zoom_regions, np.float32)], axis=1)
    if zoomed_rows.shape[1] != width:  # a zoomed read without its regions adds nothing
        zoomed_rows = np.zeros((0, width, vectors.shape[1]), np.float32)
        zoom_ids = []
    out = np.repeat(vectors[:, None], width, axis=1)
    pos = {k: j for j, k in enumerate(zoom_ids)}
    for i, k in enumerate(ids):
        if k in pos:
            out[i] = zoomed_rows[pos[k]]
    if has_regions:
        out = np.concatenate([np.asarray(regions, np.float32), out], axis=1)
    return out.astype(np.float16)


def model_extractor(extractor) -> GlobalExtractor:
    """The single-model extractor inside ``extractor`` whose forward pass probes run on (the first model)."""
    while not isinstance(extractor, GlobalExtractor):
        extractor = extractor.base if isinstance(extractor, WhitenedExtractor) else extractor.parts[0]
    return extractor


def base_extractor(
    config: FeatureSettings, device: str | None = None, engine_dir: str | Path | None = None
) -> Extractor:
    """The un-whitened extractor of ``config``: one model, or the ensemble ``model`` + ``ensemble``
    (their inference engines' graphs kept in ``engine_dir``)."""
    first = GlobalExtractor.from_config(config, device=device, engine_dir=engine_dir)
    if not config.ensemble:
        return first
    settings = cast("DataclassInstance", config)  # a protocol; what implements it (Config) is a dataclass
    parts = [first] + [
        GlobalExtractor.from_config(
            cast(FeatureSettings, dataclasses.replace(settings, model=m)), device=device, engine_dir=engine_dir
        )
        for m in config.ensemble
    ]
    return EnsembleExtractor(parts)


def auto_learns_pca(config: FeatureSettings, photos: int) -> bool:
    """Whether ``whitening.kind=auto`` learns PCA from ``photos`` photos: only from more than
    ``whitening.dim`` of them (fewer span fewer directions than it keeps, and their mean is a poor
    estimate of a collection's), else the store keeps the network's descriptors."""
    return photos > config.whitening.dim


def whitening_in_force(config: FeatureSettings, store_root: str | Path | None) -> str:
    """The whitening a store of ``config`` at ``store_root`` applies: ``none``, ``pca`` or ``learned``
    (``auto`` is ``pca`` where the store learned one, else ``none``)."""
    kind = config.whitening.kind
    if kind != "auto":
        return kind
    return "pca" if store_root is not None and (Path(store_root) / WHITENING_FILE).is_file() else "none"


def build_extractor(
    config: FeatureSettings,
    device: str | None = None,
    store_root: str | Path | None = None,
    base: Extractor | None = None,
) -> Extractor:
    """The extractor of a store: whitened with ``store_root/whitening.npz`` if ``config`` asks for it
    (``auto``: if the store learned one); ``base``: the un-whitened extractor of ``config`` where one
    is at hand (a build that learned the whitening with it), else made here."""
    if base is None:
        base = base_extractor(
            config, device=device, engine_dir=Path(store_root) / STORE_ENGINES_DIR if store_root is not None else None
        )
    if config.whitening.kind not in WHITENING_KINDS:
        raise WhiteningError(f"whitening.kind must be one of {WHITENING_KINDS}, got {config.whitening.kind!r}")
    if whitening_in_force(config, store_root) == "none":
        return base
    path = Path(store_root) / WHITENING_FILE if store_root is not None else None
    if path is None or not path.is_file():
        raise WhiteningError(
            f"the configuration asks for whitening but {path} does not exist "
            "(build the store with `landmark index build`, which learns it)"
        )
    return WhitenedExtractor(base, Whitening.load(path))


def learn_store_whitening(
    config: FeatureSettings,
    base: Extractor,
    items: Sequence[PhotoItem],
    store_root: str | Path,
    *,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
    held_out: Sequence[str] = (),
) -> Whitening:
    """Extract ``items`` with ``base``, learn the store's whitening and save it in the store: PCA
    (``kind=pca``) of the photos (the index split), or the learned whitening (``kind=learned``) of the
    labelled ones among them but those in ``held_out`` (kept for validation, recorded in the file).
    ``cache_dir`` makes the extraction resumable (it may hold other photos: only ``items`` are read)."""
    wc = config.whitening
    if wc.kind == "learned":
        skip = set(held_out)
        items = [r for r in items if getattr(r, "landmark_id", None) is not None and r.id not in skip]
        if not items:
            raise WhiteningError(
                "whitening.kind=learned is learned from labelled photos, and none of those given has a label"
            )
    res = base.extract(items, cache_dir=cache_dir, progress=progress, description="extract (whitening)")
    wanted = {r.id: r for r in items}
    keep = [n for n, i in enumerate(res.ids) if i in wanted]  # a cache may hold photos of an earlier run
    vectors, ids = res.vectors[keep], [res.ids[n] for n in keep]
    dim = min(wc.dim, base.dim, len(vectors) - 1)
    if wc.kind == "learned":
        labels = np.array([getattr(wanted[i], "landmark_id", None) for i in ids], np.int64)  # all labelled (above)
        w = learn_labelled_whitening(
            vectors, labels, dim, shrinkage=wc.shrinkage, held_out=tuple(sorted(set(held_out)))
        )
    else:
        w = learn_whitening(vectors, dim, power=wc.power, shrinkage=wc.shrinkage)
    w.save(Path(store_root) / WHITENING_FILE)
    return w
