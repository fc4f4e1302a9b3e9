"""The state every part of the pipeline over a store shares: the store, the extractor whose signature
it carries, the configuration in force, the local features and the recognition thresholds."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PIL import Image

from ..config import Config
from ..data import load_image
from ..features.local import LocalExtractor, LocalFeatures
from ..features.pipeline import Extractor, WhitenedExtractor
from ..index import Store, StoreError
from ..index.local import LOCAL_DIR, LocalStore
from ..index.store import check_signature
from ..recognition.calibrate import store_recognition
from ..recognition.config import RecognitionConfig
from ..recognition.setup import attach_prior, prior_source
from ..retrieval.rerank import Verifier
from .results import Photo


class StoreContext:
    """A store plus the extractor whose signature it carries, and what the parts read of them."""

    def __init__(self, store: Store, extractor: Extractor, config: Config | None = None):
        check_signature(store, extractor.signature)
        self.store = store
        self.extractor = extractor
        self.config: Config = config or store.config  # local features / re-ranking settings
        self.ray: Any = None  # a landmark.distributed.RayConfig: database extraction then runs on Ray actors
        self.local = LocalStore.open_if_exists(store.root / LOCAL_DIR)
        self._verifier: Verifier | None = None
        # the store's (calibrated) thresholds; recognition's part replaces them (set_recognition_config)
        self.recognition_config: RecognitionConfig = store_recognition(store)
        self.groups = attach_prior(extractor, store.config.recognition)  # group probabilities in the same pass
        if store.config.model.checkpoint and isinstance(extractor, WhitenedExtractor):
            extractor.keep_descriptors = True  # the trained head reads the queries' un-whitened descriptors

    def close(self) -> None:
        """Close the store and its local features."""
        if self.local is not None:
            self.local.close()
        self.store.close()

    @property
    def prior_source(self) -> str:
        """Which classifier makes this store's object priors (``ImageNetPrior.source``; "own" without one)."""
        return prior_source(self.extractor)

    # -- local features ---------------------------------------------------------------------------
    @property
    def has_local_features(self) -> bool:
        """Whether the store keeps local features to verify neighbours with (``rerank.enabled`` switches
        them for search; recognition verifies whenever they are there)."""
        return self.local is not None and len(self.local) > 0

    def set_local(self, local: LocalStore) -> None:
        """Use ``local`` (local features made anew) from now on."""
        self.local = local
        self._verifier = None

    @property
    def verifier(self) -> Verifier:
        if self.local is None:
            raise StoreError(f"{self.store.root} has no local features")
        if self._verifier is None:
            self._verifier = Verifier(self.local, self.config.rerank)
        return self._verifier

    def local_extractor(self) -> LocalExtractor:
        """The local-feature extractor a build uses (``local`` of the configuration in force)."""
        return LocalExtractor(self.config.local)

    def query_local_extractor(self) -> LocalExtractor:
        """The local-feature extractor for queries: the stored features' settings where there are some."""
        cfg = self.config.local
        if self.local is not None:  # match the stored features, whatever the current config says
            sig = self.local.signature
            cfg = replace(
                cfg,
                kind=sig["kind"],
                image_size=sig["image_size"],
                max_keypoints=sig["max_keypoints"],
                checkpoint=sig.get("checkpoint", cfg.checkpoint),  # delf: the stored features' network
                model=sig.get("model", ""),
            )  # learned kinds: their variant
        return LocalExtractor(cfg)

    def local_features(self, photo: Photo) -> LocalFeatures:
        """Local features of a photo (path or PIL image) made like the stored ones."""
        img = photo if isinstance(photo, Image.Image) else load_image(photo)
        return self.query_local_extractor().extract_image(img)
