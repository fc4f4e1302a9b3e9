"""The Python API: one object over a store and the extractor that made it.

>>> import landmark
>>> lm = landmark.open("runs/store")                      # doctest: +SKIP
>>> lm.recognize(["photo.jpg"])[0].landmark_id            # doctest: +SKIP
>>> [m.id for m in lm.search(["photo.jpg"], k=5)[0].matches]   # doctest: +SKIP

:class:`Landmarks` composes the typed parts of :mod:`landmark.pipeline` (``lm.building``,
``lm.searching``, ``lm.recognising``, over ``lm.ctx``) and adds calibration, which spans them.
The CLI and the HTTP service are thin layers over this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import numpy as np
from PIL import Image

from .config import Config
from .data import ImageError, load_image
from .evaluation.calibration import calibrate_store_parts
from .features.extract import GlobalExtractor
from .features.pipeline import Extractor
from .index import Store
from .index.local import LocalStore
from .pipeline import Parts, StoreContext, build_store, create_store, open_store
from .pipeline.building import Building
from .pipeline.embedding import Embedding
from .pipeline.recognising import Recognising
from .pipeline.results import BuildReport, Match, Photo, PhotoOutcome, Recognition, Renamed, SearchOutput
from .pipeline.searching import Searching

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class Delegated(Generic[P, R]):
    """A facade attribute that is one part's method: ``lm.search`` is ``lm.searching.search``, with its
    signature and documentation (a subclass of the facade may still override it)."""

    def __init__(self, part: str, method: Callable[Concatenate[Any, P], R]):
        self.part, self.name, self.__doc__ = part, method.__name__, method.__doc__

    def __get__(self, obj: Any, owner: type | None = None) -> Callable[P, R]:
        return getattr(getattr(obj, self.part), self.name) if obj is not None else self  # type: ignore[return-value]


class Landmarks(Parts):
    """A store plus the extractor whose signature it carries: build, search, recognise, calibrate."""

    def __init__(self, store: Store, extractor: Extractor, config: Config | None = None):
        super().__init__(StoreContext(store, extractor, config))

    @classmethod
    def of(cls, ctx: StoreContext) -> Landmarks:
        lm = cls.__new__(cls)
        Parts.__init__(lm, ctx)
        return lm

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def open(cls, store_dir: str | Path, device: str | None = None, *, warm: bool = True) -> Landmarks:
        """Open a store with the extractor it was built with; ``warm``: pay now what the first query
        would otherwise wait for (:meth:`warm`), so that it is as fast as the tenth."""
        lm = cls.of(open_store(store_dir, device))
        if warm:
            lm.warm()
        return lm

    @classmethod
    def create(
        cls,
        store_dir: str | Path,
        config: Config | None = None,
        *,
        device: str | None = None,
        overwrite: bool = False,
        base: GlobalExtractor | None = None,
    ) -> Landmarks:
        """Open the store at ``store_dir`` if it was made with ``config``, else make a new one
        (:func:`landmark.pipeline.create_store`)."""
        return cls.of(create_store(store_dir, config, device=device, overwrite=overwrite, base=base))

    @classmethod
    def build(
        cls,
        data: str | Path,
        store_dir: str | Path,
        config: Config | None = None,
        *,
        splits: Sequence[str] | None = None,
        device: str | None = None,
        overwrite: bool = False,
        progress: bool | None = None,
        ray: Any = None,
    ) -> tuple[Landmarks, BuildReport]:
        """Build (or finish building) a store from a GLDv2 root or a folder of photos; resumable
        (:func:`landmark.pipeline.build_store`). ``ray``: a :class:`landmark.distributed.RayConfig`."""
        ctx, report = build_store(
            data, store_dir, config, splits=splits, device=device, overwrite=overwrite, progress=progress, ray=ray
        )
        return cls.of(ctx), report

    def warm(self) -> None:
        """Run one landscape and one portrait photo through the whole recognition (engine made or
        compiled, its kernels for those shapes, the recognizer's known non-landmarks, the query's
        local features and their verification), so that the first real query does not pay for them."""
        size = self.store.config.extract.image_size
        rng = np.random.default_rng(0)
        photos: list[Photo] = [
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            for h, w in ((size * 3 // 4, size), (size, size * 3 // 4))
        ]
        t0 = time.perf_counter()
        try:
            self.recognize(photos, progress=False)
        except Exception as exc:  # noqa: BLE001 - the first real query then pays, and reports what fails
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

    # -- the everyday calls, each one part's (signature and docs are the part's) ----------------
    add_photos = Delegated("building", Building.add_photos)
    import_vectors = Delegated("building", Building.import_vectors)
    remove = Delegated("building", Building.remove)
    expand = Delegated("building", Building.expand)
    embed = Delegated("embedding", Embedding.embed)
    search = Delegated("searching", Searching.search)
    match_evidence = Delegated("searching", Searching.match_evidence)
    recognize = Delegated("recognising", Recognising.recognize)
    detect = Delegated("recognising", Recognising.detect)
    ensure_extras = Delegated("recognising", Recognising.ensure_extras)
    cluster = Delegated("recognising", Recognising.cluster)

    calibrate = calibrate_store_parts  # spans the parts: landmark.evaluation.calibration


def open(store_dir: str | Path, device: str | None = None, *, warm: bool = True) -> Landmarks:  # noqa: A001
    """Open an existing store with the extractor it was built with (see :meth:`Landmarks.open`)."""
    return Landmarks.open(store_dir, device=device, warm=warm)


def load_photo(source: Any) -> Image.Image:
    """Decode one photo safely (EXIF orientation, any mode to RGB); raises :class:`ImageError`."""
    return load_image(source)


__all__ = [
    "BuildReport",
    "ImageError",
    "Landmarks",
    "Match",
    "PhotoOutcome",
    "Recognition",
    "Renamed",
    "SearchOutput",
    "open",
    "load_photo",
]
