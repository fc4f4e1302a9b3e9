"""Recognising photos over a store (Baidu GLR19 §3): the evidence of a query's neighbours, object
prior, detector and local features, then the decision, grade and score of each photo."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data import ImageError
from ..data.manifests import ImageRecord
from ..features.extract import REGIONS_EXTRA, ExtractionResult
from ..features.local import LocalFeatures
from ..features.pipeline import DESCRIPTOR_EXTRA
from ..index import Store
from ..index.local import LocalStore
from ..recognition.config import RecognitionConfig
from ..recognition.filters import PROBE_NAME, ClassGroups
from ..recognition.pipeline import Decision, Evidence, Recognizer, decide, neighbour_inliers
from ..recognition.setup import backfill_prior, make_recognizer
from ..training.pseudo import ClusterConfig, StoreClusters, cluster_store
from .context import StoreContext
from .embedding import Embedding
from .results import Match, Photo, Recognition, query_names

log = logging.getLogger(__name__)


class QueryLocalFeatures(Mapping[str, LocalFeatures]):
    """Query photos' local features by id, extracted when read and not kept (a batch of thousands never
    holds them all), as :meth:`StoreContext.local_features` makes them for search's re-rank, upright only
    (recognition's evidence does not try ``rerank.rotations``). A photo that cannot be read again is
    missing (``get`` gives None: its neighbours stay unverified)."""

    def __init__(self, ctx: StoreContext, photos: Mapping[str, Photo]):
        self.ctx, self.photos = ctx, photos

    def __getitem__(self, query: str) -> LocalFeatures:
        photo = self.photos[query]
        try:
            return self.ctx.local_features(photo)
        except ImageError as exc:
            log.warning("no local features for %s, its neighbours stay unverified: %s", query, exc)
            raise KeyError(query) from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self.photos)

    def __len__(self) -> int:
        return len(self.photos)


class Recognising:
    """Recognition over the store of ``ctx``: :meth:`recognize` and the steps it is made of."""

    def __init__(self, ctx: StoreContext, embedding: Embedding):
        self.ctx, self.embedding = ctx, embedding
        self._recognizer: Recognizer | None = None

    # what calibration reads of it (landmark.recognition.calibrate.Calibrated)
    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def groups(self) -> ClassGroups | None:
        return self.ctx.groups

    @property
    def prior_source(self) -> str:
        return self.ctx.prior_source

    @property
    def recognition_config(self) -> RecognitionConfig:
        return self.ctx.recognition_config

    def query_views(
        self,
        items: Sequence[ImageRecord],
        *,
        progress: bool | None = None,
        cache_dir: str | Path | None = None,
        description: str = "queries",
    ) -> ExtractionResult:
        return self.embedding.query_views(items, progress=progress, cache_dir=cache_dir, description=description)

    def recognize(self, photos: Sequence[Photo], *, progress: bool | None = None) -> list[Recognition]:
        """Landmark id, score in [0, 1], grade and evidence for each photo (the pipeline of Baidu §3)."""
        ids, vectors, errors, extras = self.embedding.queries(photos, progress, with_extras=True)
        by_name = dict(zip(query_names(photos), photos))
        detections = self.detect([by_name[q] for q in ids], progress=progress)
        out: dict[str, Recognition] = {q: Recognition(q, None, None, 0.0, error=e) for q, e in errors.items()}
        recs = self.recognize_vectors(
            vectors,
            extras=extras,
            ids=ids,
            detections=detections,
            local=self.query_local_features(by_name),
            progress=progress,
        )
        for q, rec in zip(ids, recs):
            rec.query = q
            out[q] = rec
        return [out[q] for q in query_names(photos)]

    @property
    def recognizer(self) -> Recognizer:
        """The recognition pipeline over this store (classifier from the store's trained model, if any)."""
        if self._recognizer is None:
            self._recognizer = make_recognizer(
                self.ctx.store, self.ctx.recognition_config, self.ctx.groups, self.ctx.prior_source
            )
        return self._recognizer

    def set_recognition_config(self, cfg: RecognitionConfig) -> None:
        """Use ``cfg`` for recognition from now on."""
        self.ctx.recognition_config = cfg
        self._recognizer = None

    def detect(self, photos: Sequence[Photo], *, progress: bool | None = None):
        """The configured object detector's decision on each photo (``recognition.detector``, the
        paper's rule), for :meth:`gather`; None when no detector is configured."""
        return self.recognizer.detect(photos, progress=progress)

    def gather(
        self,
        vectors: np.ndarray,
        *,
        extras: dict[str, np.ndarray] | None = None,
        ids: Sequence[str] | None = None,
        detections: Sequence | None = None,
    ) -> Evidence:
        """The recognition evidence of a batch of query descriptors (see :mod:`landmark.recognition.pipeline`);
        ``detections``: :meth:`detect` of the same photos, in the same order."""
        ids = list(ids) if ids is not None else [str(i) for i in range(len(vectors))]
        extras = extras or {}
        return self.recognizer.gather(
            vectors,
            ids,
            extras.get(PROBE_NAME),
            detections,
            descriptors=extras.get(DESCRIPTOR_EXTRA),
            regions=extras.get(REGIONS_EXTRA),
        )

    def verify_neighbours(
        self, ev: Evidence, features: Mapping[str, LocalFeatures] | LocalStore, *, progress: bool | None = None
    ) -> Evidence:
        """Fill ``ev.inliers`` (the geometric evidence :func:`~landmark.recognition.pipeline.decide` weighs
        against the non-landmark filters) from the queries' local features by query id: a mapping (e.g.
        :meth:`query_local_features`), or a :class:`LocalStore` of cached query features (``landmark
        evaluate``'s), read one query at a time. Each query is verified against its top-k labelled
        neighbours as search re-ranks (:attr:`verifier`); a query without features stays unverified (-1),
        and a store without local features leaves ``ev.inliers`` None. Returns ``ev``."""
        if not self.ctx.has_local_features:
            return ev
        lookup = (
            (lambda q: features[q] if q in features else None) if isinstance(features, LocalStore) else features.get
        )
        ev.inliers = neighbour_inliers(
            ev.keys, ev.labels.shape[1], (lookup(q) for q in ev.ids), self.ctx.verifier.inliers, progress=progress
        )
        return ev

    def query_local_features(self, photos: Mapping[str, Photo]) -> QueryLocalFeatures:
        """The local features of query ``photos`` (id -> path or PIL image) for :meth:`verify_neighbours`,
        made like the stored ones (:meth:`local_features`) when read, one photo at a time."""
        return QueryLocalFeatures(self.ctx, photos)

    def recognize_vectors(
        self,
        vectors: np.ndarray,
        *,
        extras: dict[str, np.ndarray] | None = None,
        ids: Sequence[str] | None = None,
        detections: Sequence | None = None,
        local: Mapping[str, LocalFeatures] | LocalStore | None = None,
        progress: bool | None = None,
    ) -> list[Recognition]:
        """Recognitions of query descriptors; ``extras`` are the extractor's probe outputs (object prior),
        ``detections`` the object detector's decisions (:meth:`detect`), ``local`` the queries' local
        features by id (:meth:`query_local_features` of their photos), which verify their neighbours
        (:meth:`verify_neighbours`)."""
        if not len(vectors):
            return []
        ev = self.gather(vectors, extras=extras, ids=ids, detections=detections)
        if local is not None:
            self.verify_neighbours(ev, local, progress=progress)
        return self.recognitions(ev, decide(ev, self.recognizer.cfg))

    def recognitions(self, ev: Evidence, decisions: Sequence[Decision]) -> list[Recognition]:
        names = self.ctx.store.label_names()
        rows = self.ctx.store.get(sorted({k for row in ev.keys for k in row if k is not None}))
        out = []
        for qi, d in enumerate(decisions):
            inliers = ev.inliers[qi] if ev.inliers is not None else np.full(len(ev.keys[qi]), -1)
            matches = [
                Match(
                    key,
                    float(s),
                    int(lab) if lab >= 0 else None,
                    names.get(int(lab)) if lab >= 0 else None,
                    rows[key].path if key in rows else None,
                    int(inl) if inl >= 0 else None,
                )
                for key, s, lab, inl in zip(ev.keys[qi], ev.scores[qi], ev.labels[qi], inliers)
                if key is not None
            ]
            out.append(
                Recognition(
                    ev.ids[qi],
                    d.landmark_id,
                    names.get(d.landmark_id) if d.landmark_id is not None else None,
                    d.score,
                    ev.votes[qi].votes,
                    matches,
                    grade=d.grade,
                    evidence=d.evidence,
                )
            )
        return out

    def cluster(
        self, split: str = "index", cfg: ClusterConfig | None = None, *, landmarks_only: bool = True
    ) -> StoreClusters:
        """Pseudo-landmarks for the photos of ``split``: clusters of their global descriptors
        (:func:`landmark.training.pseudo.cluster_store`), without the photos recognition knows are not
        landmarks (``landmarks_only``: object prior + distractors split), so that clusters are places."""
        exclude = self.recognizer.known_non_landmarks()[0] if landmarks_only else ()
        return cluster_store(self.ctx.store, split, cfg, exclude=exclude)

    def ensure_extras(self, *, progress: bool | None = None) -> int:
        """Compute the object prior of stored photos that lack it (stores built before it existed); returns how many."""
        n = backfill_prior(self.ctx, progress=progress)
        if n:
            self._recognizer = None
        return n
