"""Photos to descriptors with the store's extractor: database photos, and queries with the views
recognition reads (object prior, regions, the zoomed read)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image

from ..data import Manifest
from ..data.manifests import ImageRecord
from ..features.extract import REGIONS_EXTRA, ExtractionResult
from ..features.pipeline import zoom_views, zoomed
from .context import StoreContext
from .results import Photo, query_names


class Embedding:
    """Descriptors of photos given as paths, PIL images or a manifest, made like the stored ones."""

    def __init__(self, ctx: StoreContext):
        self.ctx = ctx

    def embed(
        self,
        photos: Sequence[Photo] | Manifest,
        *,
        progress: bool | None = None,
        cache_dir: str | Path | None = None,
        queries: bool = False,
    ) -> ExtractionResult:
        """Descriptors for photos given as paths, PIL images, or a manifest. ``queries``: also the
        extras recognition reads (object prior, and the regional and zoomed views of
        ``recognition.regions`` / ``recognition.zoom``)."""
        extractor = self.ctx.extractor
        if isinstance(photos, Manifest):
            items = photos.records
        elif all(isinstance(p, Image.Image) for p in photos):
            images = [p for p in photos if isinstance(p, Image.Image)]
            ids = [f"image-{i}" for i in range(len(images))]
            if not queries:
                return ExtractionResult(ids, extractor.extract_images(images))
            vecs, extras = self.query_views_of_images(images)
            return ExtractionResult(ids, vecs, extras=extras)
        else:
            items = [ImageRecord(str(p), Path(cast("str | Path", p))) for p in photos]  # a mixed list fails here
        if queries:
            return self.query_views(items, progress=progress, cache_dir=cache_dir)
        return extractor.extract(items, progress=progress, cache_dir=cache_dir)

    def query_views(
        self,
        items: Sequence[ImageRecord],
        *,
        progress: bool | None = None,
        cache_dir: str | Path | None = None,
        description: str = "queries",
    ) -> ExtractionResult:
        """Descriptors of query photos on disk with what recognition reads: the probe outputs, and
        as ``extras[REGIONS_EXTRA]`` the views that also look for labelled neighbours: the regions
        (``recognition.regions``), then the global descriptor and regions of the photo read at
        ``recognition.zoom`` times the image size (a second forward pass, 4x the pixels at zoom 2)."""
        cfg, extractor = self.ctx.recognition_config, self.ctx.extractor
        res = extractor.extract(
            items, progress=progress, cache_dir=cache_dir, description=description, regions=cfg.regions
        )
        if cfg.zoom <= 1 or not res.ids:
            return res
        done = set(res.ids)
        z = zoomed(extractor, cfg.zoom).extract(
            [r for r in items if r.id in done],
            progress=progress,
            regions=cfg.regions,
            cache_dir=Path(cache_dir) / f"zoom-{cfg.zoom:g}" if cache_dir is not None else None,
            description=f"{description} (zoom {cfg.zoom:g})",
        )
        views = zoom_views(
            res.ids, res.vectors, res.extras.get(REGIONS_EXTRA), z.ids, z.vectors, z.extras.get(REGIONS_EXTRA)
        )
        return replace(res, extras=res.extras | {REGIONS_EXTRA: views})

    def query_views_of_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:meth:`query_views` of in-memory photos: their descriptors and extras."""
        cfg, extractor = self.ctx.recognition_config, self.ctx.extractor
        vecs, extras = extractor.extract_images_with_probe(images, cfg.regions)
        if cfg.zoom > 1 and len(images):
            zv, ze = zoomed(extractor, cfg.zoom).extract_images_with_probe(images, cfg.regions)
            ids = [str(i) for i in range(len(images))]
            extras = extras | {
                REGIONS_EXTRA: zoom_views(ids, vecs, extras.get(REGIONS_EXTRA), ids, zv, ze.get(REGIONS_EXTRA))
            }
        return vecs, extras

    def queries(
        self, photos: Sequence[Photo], progress: bool | None, with_extras: bool = False
    ) -> tuple[list[str], np.ndarray, dict[str, str], dict[str, np.ndarray]]:
        """``(ids, vectors, errors, extras)`` of query photos (paths and in-memory images mixed): the
        photos that could be read, in order, and an error per photo that could not. ``with_extras``:
        with the views recognition reads (else ``extras`` is empty)."""
        names = query_names(photos)
        errors: dict[str, str] = {}
        paths = [(n, p) for n, p in zip(names, photos) if not isinstance(p, Image.Image)]
        images = [(n, p) for n, p in zip(names, photos) if isinstance(p, Image.Image)]
        ids: list[str] = []
        vecs: list[np.ndarray] = []
        extras: list[dict[str, np.ndarray]] = []
        if paths:
            items = [ImageRecord(n, Path(p)) for n, p in paths]
            res = (
                self.query_views(items, progress=progress)
                if with_extras
                else self.ctx.extractor.extract(items, progress=progress, description="queries")
            )  # only recognition reads the views
            ids += res.ids
            vecs.append(res.vectors)
            extras.append(res.extras)
            errors.update({f.id: f.reason for f in res.failures})
        if images:
            ids += [n for n, _ in images]
            v, e = (
                self.query_views_of_images([im for _, im in images])
                if with_extras
                else (self.ctx.extractor.extract_images([im for _, im in images]), {})
            )
            vecs.append(v)
            extras.append(e)
        vectors = np.concatenate(vecs) if vecs else np.zeros((0, self.ctx.extractor.dim), np.float32)
        parts = [(len(v), e) for v, e in zip(vecs, extras) if len(v)]  # a part whose photos all failed adds nothing
        merged = {
            name: np.concatenate([e[name] for _, e in parts])
            for name in (parts[0][1] if parts else {})
            if all(name in e and len(e[name]) == n for n, e in parts)
        }
        return ids, vectors, errors, merged
