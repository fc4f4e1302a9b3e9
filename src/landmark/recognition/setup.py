"""Wiring the recognition stages to a store and its extractor (used by :mod:`landmark.pipeline`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..data.manifests import ImageRecord
from ..features.pipeline import model_extractor, whitening_in_force
from ..index import Store
from .calibrate import CALIBRATION_META
from .classifier import LandmarkClassifier
from .config import DETECTORS, RecognitionConfig
from .filters import PROBE_NAME, ClassGroups, ImageNetPrior, onnx_detector
from .pipeline import Recognizer

log = logging.getLogger(__name__)

GROUPS_META = "prior_groups"  # the store meta key naming the groups its extras were made with
SOURCE_META = "prior_source"  # ... and the classifier that made them (ImageNetPrior.source)


def attach_prior(extractor, cfg: RecognitionConfig) -> ClassGroups | None:
    """Make ``extractor`` compute the ImageNet class-group probabilities beside each descriptor.

    Returns the groups, or None when the backbone has no ImageNet classifier (no object prior then).
    """
    single = model_extractor(extractor)  # ensembles and whitened extractors probe their first model
    backbone = single.net.backbone
    if not ImageNetPrior.available(backbone):
        return None
    groups = ClassGroups.load(cfg.prior_groups)
    attached = single.probe
    if single.probe_name == PROBE_NAME and isinstance(attached, ImageNetPrior) and attached.groups.same_as(groups):
        return attached.groups  # already there (a service makes a Landmarks per store generation)
    # a trained checkpoint's changed stages no longer suit the ImageNet classifier: read the pretrained ones
    prior = (
        ImageNetPrior.for_backbone(backbone, groups) if single.model_cfg.checkpoint else ImageNetPrior(backbone, groups)
    )
    single.set_probe(PROBE_NAME, prior)
    return groups


def prior_source(extractor) -> str:
    """The :attr:`ImageNetPrior.source` of ``extractor``'s probe ("own" without a tail)."""
    return getattr(model_extractor(extractor).probe, "source", "own")


def record_groups(store, groups: ClassGroups, source: str = "own") -> None:
    if store.meta_value(GROUPS_META) != list(groups.names):
        store.set_meta_value(GROUPS_META, list(groups.names))
    if (store.meta_value(SOURCE_META) or "own") != source:
        store.set_meta_value(SOURCE_META, source)


def calibrated_with_other_priors(store, source: str) -> bool:
    """The store's thresholds were fitted on priors made by another classifier (``landmark calibrate`` again)."""
    report = store.meta_value(CALIBRATION_META)
    return bool(report) and report.get("validation", {}).get("prior_source", "own") != source


def priors_stale(store, groups: ClassGroups, source: str = "own") -> bool:
    """The stored priors were made with other groups or by another classifier."""
    made = store.meta_value(GROUPS_META)
    return made is not None and (made != list(groups.names) or (store.meta_value(SOURCE_META) or "own") != source)


def make_recognizer(store, cfg: RecognitionConfig, groups: ClassGroups | None, source: str = "own") -> Recognizer:
    """The pipeline for ``store``: its trained model's head as classifier (if any), the prior, the detector."""
    classifier = None
    ckpt = store.config.model.checkpoint
    if ckpt:
        try:
            classifier = LandmarkClassifier.from_checkpoint(ckpt)
        except FileNotFoundError:
            log.warning("the store's model %s is gone: no classifier agreement (B1/B2)", ckpt)
    if classifier is not None and whitening_in_force(store.config, store.root) != "none":
        classifier = classifier.reading_unwhitened()  # the extractor keeps the queries' descriptors for it
    if classifier is not None and store.config.ensemble:
        classifier = classifier.reading_leading()  # the trained model comes first in the concatenation
    if groups is not None and priors_stale(store, groups, source):
        log.warning(
            "store %s holds object priors made with other class groups or another classifier; "
            "run Landmarks.ensure_extras()",
            store.root,
        )
    elif groups is not None and calibrated_with_other_priors(store, source):
        log.warning(
            "store %s was calibrated on object priors of another classifier; run `landmark calibrate`", store.root
        )
    return Recognizer(store, cfg, classifier, groups, make_detector(cfg))


def make_detector(cfg: RecognitionConfig):
    """The object detector of ``recognition.detector``: a registered kind (:data:`DETECTORS`), else the
    path of an ONNX model (:class:`OnnxDetector`, with its labels and roles); None when there is none."""
    if not cfg.detector:
        return None
    if cfg.detector in DETECTORS:
        return DETECTORS[cfg.detector](cfg)
    return onnx_detector(cfg)


class PriorTarget(Protocol):
    """A store and the extractor that made it (:class:`landmark.pipeline.StoreContext` is one)."""

    store: Store
    extractor: Any
    groups: ClassGroups | None

    @property
    def prior_source(self) -> str: ...


def backfill_prior(lm: PriorTarget, *, progress: bool | None = None) -> int:
    """Compute the object prior of stored photos that lack it (or were made with other groups)."""
    store, groups = lm.store, lm.groups
    if groups is None:
        return 0
    keys = store.keys()
    if not keys:
        return 0
    source = lm.prior_source
    stale = priors_stale(store, groups, source)
    probs = store.extras(keys, PROBE_NAME)
    missing = (
        keys
        if stale or probs.shape[1] != len(groups.names)
        else [k for k, row in zip(keys, probs) if not np.isfinite(row).all()]
    )
    rows = store.get(missing)
    paths = {k: Path(path) for k in missing if (path := rows[k].path)}
    todo = [k for k in missing if k in paths and paths[k].is_file()]
    redone: list[str] = []
    if todo:
        work = store.root / "_work" / "extract-prior"
        res = lm.extractor.extract(
            [ImageRecord(k, paths[k]) for k in todo],
            cache_dir=work,
            progress=progress,
            description="object prior of stored photos",
        )
        if PROBE_NAME in res.extras and len(res.ids):
            store.set_extras(res.ids, PROBE_NAME, res.extras[PROBE_NAME])
            redone = res.ids
        shutil.rmtree(work, ignore_errors=True)
    if stale:  # photos gone or unreadable now: no prior is better than another classifier's
        done = set(redone)
        lost = [k for k in missing if k not in done]
        if lost:
            store.set_extras(lost, PROBE_NAME, np.full((len(lost), len(groups.names)), np.nan, np.float32))
        record_groups(store, groups, source)
    elif redone:
        record_groups(store, groups, source)
    return len(redone)
