"""The classifier predictor: the head a trained checkpoint (``landmark train``'s model.pt) was trained with.

The checkpoint holds ``classes`` (landmark ids), ``head`` (the head's state dict) and ``head_kind``;
the head is rebuilt from :mod:`landmark.models.heads` and applied to the query descriptors. Cosine
heads (ArcFace, sub-center ArcFace, CosFace) only see the direction of the embedding, so applying
them to the stored unit descriptor is exact; linear heads (softmax, BCE) are applied to the unit
descriptor scaled by sqrt(D), the expected norm of the batch-normalised embedding (an approximation).
Probabilities are the softmax of the logits at the trained scale (sigmoid for BCE).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..data.manifests import PSEUDO_LABEL_OFFSET
from ..models.config import HEADS
from ..models.net import read_checkpoint

log = logging.getLogger(__name__)


@dataclass
class ClassifierPrediction:
    labels: np.ndarray  # Q x k landmark ids, best first
    probs: np.ndarray  # Q x k probabilities


class LandmarkClassifier:
    """Top-k landmark predictions of a trained head on L2-normalised descriptors.

    ``leading`` (set by :meth:`reading_leading`): the descriptors are an ensemble's, whose first
    ``dim`` values are the trained model's own descriptor divided by sqrt(number of models); the head
    reads those, re-normalised, which restores the trained model's descriptor exactly.
    ``unwhitened`` (set by :meth:`reading_unwhitened`): the store's vectors are PCA-whitened, which the
    head cannot read; it is given the un-whitened descriptors of the queries instead (the extractor's
    ``extras["descriptor"]``), and predicts nothing without them.
    """

    def __init__(self, head: nn.Module, classes: list[int], kind: str):
        self.head = head.eval()
        self.classes = np.asarray(classes, dtype=np.int64)
        self.kind = kind
        self.leading = False
        self.unwhitened = False

    @property
    def dim(self) -> int:
        """The descriptor dimension the head was trained on."""
        return int(next(self.head.parameters()).shape[1])

    def reading_leading(self) -> LandmarkClassifier:
        """Apply the head to the first :attr:`dim` values of longer (ensemble) descriptors."""
        self.leading = True
        return self

    def reading_unwhitened(self) -> LandmarkClassifier:
        """Read the queries' un-whitened descriptors, passed beside the store's whitened vectors."""
        self.unwhitened = True
        return self

    @classmethod
    def from_payload(
        cls, payload: Mapping[str, Any], head_config: Mapping[str, Any] | None = None
    ) -> LandmarkClassifier | None:
        """Rebuild the head of a checkpoint payload; None if it has none (e.g. trained with N-pairs)."""
        state, kind, classes = payload.get("head"), payload.get("head_kind"), payload.get("classes")
        if not state or not kind or not classes:
            return None
        if kind not in HEADS:
            raise ValueError(f"unknown head kind {kind!r} in checkpoint")
        spec, n = HEADS[kind], len(classes)
        weight = next(v for v in state.values() if getattr(v, "ndim", 0) == 2)  # classes (x sub-centres) x dim
        margins = state.get("class_margins")
        hc = {"scale": 30.0, "margin": 0.3, "margin_low": 0.05, "margin_high": 0.5} | dict(head_config or {})
        settings = SimpleNamespace(
            **hc
            | {"subcenters": int(weight.shape[0]) // n, "dynamic_margin": margins is not None and margins.numel() > 0}
        )
        head = spec.make(int(weight.shape[1]), [1] * n, settings)
        if head is None:
            return None
        head.load_state_dict(state, strict=True)
        return cls(head, [int(c) for c in classes], kind)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> LandmarkClassifier | None:
        """Load the head of ``landmark train``'s model.pt (its scale from train_config.json beside it, if there)."""
        path = Path(path)
        payload = read_checkpoint(path, required=())
        if payload.get("train_split", "train") != "train" or any(
            c >= PSEUDO_LABEL_OFFSET for c in payload.get("classes") or ()
        ):
            log.info(
                "%s was trained on pseudo-landmarks (landmark cluster): its head names none of the store's "
                "landmarks, so it is no classifier",
                path,
            )
            return None
        head_config = payload.get("head_config")
        cfg_file = path.parent / "train_config.json"
        if head_config is None and cfg_file.is_file():
            try:
                head_config = json.loads(cfg_file.read_text()).get("head")
            except (OSError, ValueError) as exc:
                log.warning("%s: cannot read the head configuration (%s); using default scale", cfg_file, exc)
        return cls.from_payload(payload, head_config)

    @torch.inference_mode()
    def logits(self, vectors: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32))
        if self.leading:
            x = torch.nn.functional.normalize(x[:, : self.dim], dim=1)
        if x.shape[1] != self.dim:
            raise ValueError(f"the classifier head reads {self.dim}-d descriptors, got {x.shape[1]}-d")
        if HEADS[self.kind].linear:
            x = x * math.sqrt(x.shape[1])
        logits = cast(Callable[[torch.Tensor], torch.Tensor], self.head.logits)  # every head kind has one
        return logits(x).float()

    def predict(self, vectors: np.ndarray, k: int = 5) -> ClassifierPrediction:
        """The ``k`` most probable landmarks of each descriptor."""
        if len(vectors) == 0:
            return ClassifierPrediction(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        logits = self.logits(vectors)
        probs = torch.sigmoid(logits) if HEADS[self.kind].sigmoid else torch.softmax(logits, dim=1)
        k = min(k, probs.shape[1])
        top = torch.topk(probs, k, dim=1)
        return ClassifierPrediction(self.classes[top.indices.numpy()], top.values.numpy().astype(np.float32))
