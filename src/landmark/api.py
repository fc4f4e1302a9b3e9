"""The Python API: one object over a store and the extractor that made it.

>>> import landmark
>>> lm = landmark.open("runs/store")                      # doctest: +SKIP
>>> lm.recognize(["photo.jpg"])[0].landmark_id            # doctest: +SKIP
>>> [m.id for m in lm.search(["photo.jpg"], k=5)[0].matches]   # doctest: +SKIP

:class:`Landmarks` composes the typed parts of :mod:`landmark.pipeline` (``lm.building``,
``lm.searching``, ``lm.recognising``, over ``lm.context``) and adds calibration, which spans them.
The CLI and the HTTP service are thin layers over this module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .config import Config, explicit, merge
from .data import ImageError, Manifest, load_image
from .evaluation.calibration import calibrate_category, calibrate_expansion, store_validation
from .evaluation.run import explicit_threshold
from .features.extract import ExtractionResult, GlobalExtractor
from .features.pipeline import Extractor
from .index import Store
from .index.local import LocalStore
from .pipeline import Parts, StoreContext, build_store, create_store, open_store
from .pipeline.results import BuildReport, Match, Photo, Recognition, Renamed, SearchOutput
from .recognition.calibrate import VAL_FRACTION, VAL_SEED, calibrate_store
from .training.pseudo import ClusterConfig, StoreClusters

log = logging.getLogger(__name__)


class Landmarks(Parts):
    """A store plus the extractor whose signature it carries: build, search, recognise, calibrate."""

    def __init__(self, store: Store, extractor: Extractor, config: Config | None = None):
        super().__init__(StoreContext(store, extractor, config))

    @classmethod
    def of(cls, ctx: StoreContext) -> "Landmarks":
        lm = cls.__new__(cls)
        Parts.__init__(lm, ctx)
        return lm

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def open(cls, store_dir: str | Path, device: str | None = None, *, warm: bool = True) -> "Landmarks":
        """Open a store with the extractor it was built with; ``warm``: pay now what the first query
        would otherwise wait for (:meth:`warm`), so that it is as fast as the tenth."""
        lm = cls.of(open_store(store_dir, device))
        if warm:
            lm.warm()
        return lm

    @classmethod
    def create(cls, store_dir: str | Path, config: Config | None = None, *, device: str | None = None,
               overwrite: bool = False, base: GlobalExtractor | None = None) -> "Landmarks":
        """Open the store at ``store_dir`` if it was made with ``config``, else make a new one
        (:func:`landmark.pipeline.create_store`)."""
        return cls.of(create_store(store_dir, config, device=device, overwrite=overwrite, base=base))

    @classmethod
    def build(cls, data: str | Path, store_dir: str | Path, config: Config | None = None, *,
              splits: Sequence[str] | None = None, device: str | None = None, overwrite: bool = False,
              progress: bool | None = None, ray: Any = None) -> tuple["Landmarks", BuildReport]:
        """Build (or finish building) a store from a GLDv2 root or a folder of photos; resumable
        (:func:`landmark.pipeline.build_store`). ``ray``: a :class:`landmark.distributed.RayConfig`."""
        ctx, report = build_store(data, store_dir, config, splits=splits, device=device, overwrite=overwrite,
                                  progress=progress, ray=ray)
        return cls.of(ctx), report

    def warm(self) -> None:
        """Run one landscape and one portrait photo through the whole recognition (engine made or
        compiled, its kernels for those shapes, the recognizer's known non-landmarks, the query's
        local features and their verification), so that the first real query does not pay for them."""
        size = self.store.config.extract.image_size
        rng = np.random.default_rng(0)
        photos: list[Photo] = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
                               for h, w in ((size * 3 // 4, size), (size, size * 3 // 4))]
        t0 = time.perf_counter()
        try:
            self.recognize(photos, progress=False)
        except Exception as exc:   # noqa: BLE001 - the first real query then pays, and reports what fails
            log.warning("warming up %s failed: %s", self.store.root, exc)
        log.info("warmed up in %.2f s", time.perf_counter() - t0)

    # -- what the parts share ------------------------------------------------------------------
    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def extractor(self) -> Extractor:
        return self.ctx.extractor

    @property
    def config(self) -> Config:
        """The configuration in force (local features, re-ranking, expansion, category re-rank)."""
        return self.ctx.config

    @property
    def local(self) -> LocalStore | None:
        return self.ctx.local

    # -- the everyday calls, each one part's ----------------------------------------------------
    def add_photos(self, photos: Sequence[str | Path], *, landmark_id: int | None = None, split: str = "user",
                   name: str | None = None, progress: bool | None = None) -> BuildReport:
        """Add photos under ``split`` (:meth:`landmark.pipeline.Building.add_photos`)."""
        return self.building.add_photos(photos, landmark_id=landmark_id, split=split, name=name, progress=progress)

    def import_vectors(self, vectors: np.ndarray, ids: Sequence[str], *,
                       landmark_ids: Sequence[int | None] | None = None, paths: Sequence[str | None] | None = None,
                       split: str = "index", batch_size: int = 100_000, progress: bool | None = None) -> BuildReport:
        """Add descriptors computed elsewhere, resumably (:meth:`landmark.pipeline.Building.import_vectors`)."""
        return self.building.import_vectors(vectors, ids, landmark_ids=landmark_ids, paths=paths, split=split,
                                            batch_size=batch_size, progress=progress)

    def remove(self, ids: Sequence[str]) -> int:
        return self.building.remove(ids)

    def embed(self, photos: Sequence[Photo] | Manifest, *, progress: bool | None = None,
              cache_dir: str | Path | None = None, queries: bool = False) -> ExtractionResult:
        """Descriptors of photos (:meth:`landmark.pipeline.Embedding.embed`)."""
        return self.embedding.embed(photos, progress=progress, cache_dir=cache_dir, queries=queries)

    def search(self, photos: Sequence[Photo], k: int | None = None, *, splits: Sequence[str] | None = None,
               progress: bool | None = None, rerank: bool | None = None, expand: bool | None = None,
               category: bool | None = None) -> list[SearchOutput]:
        """The ``k`` most similar stored photos of each query photo, DBA / alpha-QE, spatial and category
        re-ranks as configured unless told (:meth:`landmark.pipeline.Searching.search`)."""
        return self.searching.search(photos, k, splits=splits, progress=progress, rerank=rerank, expand=expand,
                                     category=category)

    def match_evidence(self, a: str | Photo, b: str, *, max_lines: int = 300) -> bytes | None:
        """PNG of the verified matches between ``a`` and stored ``b`` (:meth:`landmark.pipeline.Searching.match_evidence`)."""
        return self.searching.match_evidence(a, b, max_lines=max_lines)

    def recognize(self, photos: Sequence[Photo], *, progress: bool | None = None) -> list[Recognition]:
        """Landmark id, score in [0, 1], grade and evidence for each photo (:meth:`landmark.pipeline.Recognising.recognize`)."""
        return self.recognising.recognize(photos, progress=progress)

    def detect(self, photos: Sequence[Photo], *, progress: bool | None = None) -> Any:
        return self.recognising.detect(photos, progress=progress)

    def ensure_extras(self, *, progress: bool | None = None) -> int:
        """Compute the object prior of stored photos that lack it; returns how many."""
        return self.recognising.ensure_extras(progress=progress)

    def cluster(self, split: str = "index", cfg: ClusterConfig | None = None, *,
                landmarks_only: bool = True) -> StoreClusters:
        """Pseudo-landmarks of the photos of ``split`` (:meth:`landmark.pipeline.Recognising.cluster`)."""
        return self.recognising.cluster(split, cfg, landmarks_only=landmarks_only)

    def calibrate(self, *, train_ids: Sequence[str] | None = None, val_fraction: float = VAL_FRACTION,
                  seed: int = VAL_SEED, landmark_loss: float = 0.02, expansion: bool = True, category: bool = True,
                  respect: Config | None = None, progress: bool | None = None) -> dict:
        """Refit the recognition thresholds (object prior, distractor filter, grades) and, if asked,
        the DBA / alpha-QE verification threshold (``expansion``) and the category re-rank
        (``category``) on validation splits of the labelled photos (of ``train_ids`` only, if given);
        they are kept in the store and used from now on. What the user's ``respect`` sets explicitly
        stays (its expansion threshold, category and recognition settings). Never reads test data.
        Returns ``{"recognition": report, "expansion": report or None, "category": report or None}``."""
        if respect is not None:
            expansion, category = expansion and not explicit_threshold(respect), category and not explicit(respect, "category")
        self.ensure_extras(progress=progress)
        # fitted for the store's own query views (a store calibrated before them recognises without until now)
        own = self.store.config.recognition
        rec = self.recognising
        rec.set_recognition_config(replace(rec.recognition_config, regions=own.regions, zoom=own.zoom))
        recognition = calibrate_store(rec, train_ids=train_ids, val_fraction=val_fraction, seed=seed,
                                      landmark_loss=landmark_loss, progress=progress)
        # one retrieval validation split (it depends on the known non-landmarks, so after recognition)
        validation = store_validation(self, train_ids=train_ids, seed=seed) if expansion or category else None
        fitted = calibrate_expansion(self, train_ids=train_ids, seed=seed, validation=validation) if expansion else None
        fitted_category = (calibrate_category(self, train_ids=train_ids, seed=seed, validation=validation)
                           if category else None)
        if mine := (explicit(respect, "recognition") if respect is not None else {}):
            self.store.update_config(replace(self.store.config, recognition=merge(self.store.config.recognition, mine)))
        return {"recognition": recognition, "expansion": fitted, "category": fitted_category}


def open(store_dir: str | Path, device: str | None = None, *, warm: bool = True) -> Landmarks:  # noqa: A001
    """Open an existing store with the extractor it was built with (see :meth:`Landmarks.open`)."""
    return Landmarks.open(store_dir, device=device, warm=warm)


def load_photo(source: Any) -> Image.Image:
    """Decode one photo safely (EXIF orientation, any mode to RGB); raises :class:`ImageError`."""
    return load_image(source)


__all__ = ["BuildReport", "ImageError", "Landmarks", "Match", "Recognition", "Renamed", "SearchOutput", "open",
           "load_photo"]
