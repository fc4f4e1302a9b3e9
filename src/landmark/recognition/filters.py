"""Non-landmark filtering (Baidu GLR19 §3.2): an object prior, a pluggable ONNX object detector, and
the distractor-similarity filter. Each is a pure function over arrays plus a thin class that loads
its data; the pipeline (:mod:`landmark.recognition.pipeline`) decides how they are combined.

* :class:`ImageNetPrior` turns the backbone's own ImageNet-1k logits (for a fine-tuned backbone: its
  pretrained network's) into probabilities of a few class groups (``resources/imagenet_groups.yaml``:
  landmark / uncertain / non-landmark roles). It is a probe of
  :class:`~landmark.features.GlobalExtractor`, so it runs in the descriptor's forward pass.
* :class:`OnnxDetector` runs any ONNX detector with boxes / scores / labels outputs;
  :func:`detector_decision` applies the paper's rule to its detections.
* :func:`distractor_scores` is the min of each query's top-3 similarities to known non-landmark photos.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import yaml
from PIL import Image
from torch import Tensor

from ..errors import LandmarkError
from ..models.backbones import pretrained_tail
from .config import RecognitionConfig

LANDMARK, UNCERTAIN, NON_LANDMARK = "landmark", "uncertain", "non_landmark"
ROLES = (LANDMARK, UNCERTAIN, NON_LANDMARK)
PROBE_NAME = "imagenet_groups"  # the store extra holding each photo's group probabilities


class FilterConfigError(LandmarkError, ValueError):
    """A class-group or detector-label file is malformed; the message names the file and the entry."""


# -- class groups (data, not code) ------------------------------------------------------------------
@dataclass(frozen=True)
class ClassGroups:
    """Named groups of classifier (or detector) classes, each with a role."""

    names: tuple[str, ...]
    roles: tuple[str, ...]
    index: np.ndarray  # class -> group position (int64), length = number of classes

    def same_as(self, other: ClassGroups) -> bool:
        return self.names == other.names and self.roles == other.roles and np.array_equal(self.index, other.index)

    @classmethod
    def load(cls, path: str | Path | None = None, num_classes: int = 1000) -> ClassGroups:
        """Read a group file (default: the packaged ImageNet-1k groups)."""
        if path is None:
            text = resources.files("landmark.resources").joinpath("imagenet_groups.yaml").read_text()
            where = "landmark/resources/imagenet_groups.yaml"
        else:
            text, where = Path(path).read_text(), str(path)
        data = yaml.safe_load(text) or {}
        groups = data.get("groups")
        if not isinstance(groups, Mapping) or not groups:
            raise FilterConfigError(f"{where}: expected a mapping `groups`")
        names, roles = list(groups), []
        default = data.get("default_group")
        if default is not None and default not in groups:
            raise FilterConfigError(f"{where}: default_group {default!r} is not one of the groups")
        index = np.full(num_classes, names.index(default) if default else -1, np.int64)
        assigned: dict[int, str] = {}
        for gi, (name, spec) in enumerate(groups.items()):
            role = (spec or {}).get("role")
            if role not in ROLES:
                raise FilterConfigError(f"{where}: group {name!r} has role {role!r}; expected one of {ROLES}")
            roles.append(role)
            members = [int(c) for c in ((spec or {}).get("classes") or {})]
            for lo, hi in (spec or {}).get("ranges") or []:
                members += list(range(int(lo), int(hi) + 1))
            for c in members:
                if not 0 <= c < num_classes:
                    raise FilterConfigError(f"{where}: group {name!r} lists class {c}, outside 0..{num_classes - 1}")
                if c in assigned:
                    raise FilterConfigError(f"{where}: class {c} is in both {assigned[c]!r} and {name!r}")
                assigned[c] = name
                index[c] = gi
        if (index < 0).any():
            raise FilterConfigError(
                f"{where}: {int((index < 0).sum())} classes belong to no group and no default_group is set"
            )
        return cls(tuple(names), tuple(roles), index)

    def role_mask(self, role: str) -> np.ndarray:
        return np.array([r == role for r in self.roles])

    def group_probabilities(self, logits: Tensor) -> Tensor:
        """``B x classes`` logits -> ``B x groups`` probabilities (softmax, then summed per group)."""
        probs = torch.softmax(logits.float(), dim=1)
        onehot = torch.zeros(len(self.index), len(self.names), dtype=probs.dtype, device=probs.device)
        onehot[torch.arange(len(self.index)), torch.as_tensor(self.index, device=probs.device)] = 1.0
        return probs @ onehot


# -- the object prior from the backbone's ImageNet classifier ----------------------------------------
@dataclass(frozen=True)
class PriorDecision:
    decision: str  # landmark | uncertain | non_landmark
    landmark_prob: float
    non_landmark_prob: float
    top_group: str


def prior_decisions(
    probs: np.ndarray, groups: ClassGroups, landmark_min: float, object_min: float
) -> list[PriorDecision]:
    """The ImageNet analogue of the paper's detector rule, per photo (rows of group probabilities).

    Landmark classes holding at least ``landmark_min`` of the probability => landmark (kept, like a
    landmark-part object present); otherwise non-landmark classes holding more than ``object_min`` =>
    non-landmark; otherwise uncertain. Rows of NaN (no prior computed) are uncertain.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
    lm_mask, non_mask = groups.role_mask(LANDMARK), groups.role_mask(NON_LANDMARK)
    out = []
    for row in probs:
        if row.size != len(groups.names) or not np.isfinite(row).all():
            out.append(PriorDecision(UNCERTAIN, float("nan"), float("nan"), ""))
            continue
        lm, non = float(row[lm_mask].sum()), float(row[non_mask].sum())
        decision = LANDMARK if lm >= landmark_min else (NON_LANDMARK if non > object_min else UNCERTAIN)
        out.append(PriorDecision(decision, lm, non, groups.names[int(row.argmax())]))
    return out


class ImageNetPrior:
    """Group probabilities from an ImageNet-1k classifier: a probe for :class:`GlobalExtractor`.

    By default the probe reads the backbone's own classifier on its feature map. A fine-tuned backbone
    no longer feeds that classifier the features it was trained on (a trained ``cpu-mini`` model moves
    landmark photos into object classes), so :meth:`for_backbone` keeps the stages training left
    untouched and reads the *pretrained* network from the first changed stage on: ``tap`` is that
    stage, whose input the extractor hands the probe, and ``tail`` the pretrained stages + classifier.
    The probabilities are then exactly the pretrained network's, for the cost of the changed stages.
    """

    def __init__(
        self,
        backbone,
        groups: ClassGroups | None = None,
        *,
        tail: torch.nn.Module | None = None,
        tap: int | None = None,
    ):
        if (tail is None) != (tap is None):
            raise ValueError("ImageNetPrior needs both tail and tap, or neither")
        self.backbone = backbone
        self.groups = groups or ClassGroups.load()
        self.tail, self.tap = tail, tap

    @staticmethod
    def available(backbone) -> bool:
        return getattr(backbone, "head", None) is not None

    @classmethod
    def for_backbone(cls, backbone, groups: ClassGroups | None = None) -> ImageNetPrior:
        """The prior of ``backbone``'s pretrained network, read from the first stage training changed."""
        found = pretrained_tail(backbone)
        if found is None:
            return cls(backbone, groups)
        tap, tail = found
        param = next(backbone.parameters(), None)
        if param is not None:
            # torch's overloads of Module.to omit (device, memory_format=...), which it accepts
            tail = tail.to(param.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        return cls(backbone, groups, tail=tail.eval(), tap=tap)

    @property
    def source(self) -> str:
        """Which classifier makes the probabilities (recorded in the store, so a change is noticed)."""
        return "own" if self.tap is None else f"pretrained {self.backbone.name} from stage {self.tap}"

    def __call__(self, x: Tensor) -> Tensor:
        """``x``: the feature map, or with a ``tap`` the input of that stage."""
        logits = self.backbone.classify(x) if self.tail is None else self.tail(x)
        if logits.shape[1] != len(self.groups.index):
            raise FilterConfigError(
                f"backbone {self.backbone.name!r} has {logits.shape[1]} classes, the group file "
                f"covers {len(self.groups.index)}"
            )
        return self.groups.group_probabilities(logits)


# -- a pluggable ONNX object detector (the paper's Faster R-CNN on Open Images) -----------------------
@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the photo


@dataclass(frozen=True)
class DetectorDecision:
    decision: str  # landmark | uncertain | non_landmark
    reason: str


class Detector(Protocol):
    roles: Mapping[str, str]  # class name -> landmark | uncertain | non_landmark

    def detect(self, image: Image.Image) -> list[Detection]: ...


def detector_decision(
    detections: Sequence[Detection],
    image_size: tuple[int, int],
    roles: Mapping[str, str],
    score_min: float = 0.3,
    area_min: float = 0.6,
) -> DetectorDecision:
    """The paper's rule: a landmark-part object present => landmark; otherwise a non-landmark object
    with score > ``score_min`` whose box covers > ``area_min`` of the photo => candidate non-landmark.
    Labels missing from ``roles`` count as non-landmark (the paper's 'other classes')."""
    w, h = image_size
    area = float(max(1, w) * max(1, h))
    for d in detections:
        if roles.get(d.label, NON_LANDMARK) == LANDMARK and d.score > score_min:
            return DetectorDecision(LANDMARK, f"{d.label} {d.score:.2f}")
    for d in detections:
        x0, y0, x1, y1 = d.box
        cover = max(0.0, min(x1, w) - max(x0, 0.0)) * max(0.0, min(y1, h) - max(y0, 0.0)) / area
        if roles.get(d.label, NON_LANDMARK) == NON_LANDMARK and d.score > score_min and cover > area_min:
            return DetectorDecision(NON_LANDMARK, f"{d.label} {d.score:.2f} covers {cover:.0%}")
    return DetectorDecision(UNCERTAIN, "no decisive object")


class OnnxDetector:
    """An ONNX object detector run with onnxruntime.

    The model takes one ``1 x 3 x H x W`` float RGB image in [0, 1] (resized so its long side is
    ``input_size``, or fixed ``H x W`` if the model says so) and returns boxes (``N x 4``, x0 y0 x1 y1
    in input pixels), scores (``N``) and integer labels (``N``), in the output order given by
    ``outputs`` (names; default: the model's first three outputs). ``labels`` maps label indices to
    class names; ``roles`` (a YAML file ``{class name: landmark|uncertain|non_landmark}``) gives each
    name its role for :func:`detector_decision`.
    """

    def __init__(
        self,
        path: str | Path,
        labels: Sequence[str] | str | Path,
        roles: Mapping[str, str] | str | Path,
        input_size: int = 800,
        outputs: Sequence[str] | None = None,
    ):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"object detector model not found: {path}")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.outputs = list(outputs) if outputs else [o.name for o in self.session.get_outputs()[:3]]
        if len(self.outputs) != 3:
            raise FilterConfigError(f"{path}: expected three outputs (boxes, scores, labels), got {self.outputs}")
        self.labels = Path(labels).read_text().splitlines() if isinstance(labels, (str, Path)) else list(labels)
        if isinstance(roles, (str, Path)):
            roles = yaml.safe_load(Path(roles).read_text()) or {}
        bad = {k: v for k, v in roles.items() if v not in ROLES}
        if bad:
            raise FilterConfigError(f"detector roles: {bad} not in {ROLES}")
        self.roles = dict(roles)
        self.input_size = input_size

    def detect(self, image: Image.Image) -> list[Detection]:
        image = image.convert("RGB")
        w, h = image.size
        shape = self.input.shape
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            th, tw = shape[2], shape[3]
        else:
            s = self.input_size / max(w, h)
            th, tw = max(1, round(h * s)), max(1, round(w * s))
        resized = image.resize((tw, th), Image.Resampling.BILINEAR)
        arr = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
        boxes, scores, labels = self.session.run(self.outputs, {self.input.name: arr})
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([w / tw, h / th, w / tw, h / th])
        out = []
        for b, s, lab in zip(boxes, np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)):
            name = self.labels[int(lab)] if 0 <= int(lab) < len(self.labels) else str(int(lab))
            out.append(Detection(name, float(s), (float(b[0]), float(b[1]), float(b[2]), float(b[3]))))
        return out


# -- the distractor-similarity filter ------------------------------------------------------------------
def min_of_top_k(candidates: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k``-th highest value (the min of its top ``k``); ``-inf`` where fewer than ``k`` are finite."""
    candidates = np.asarray(candidates, dtype=np.float32)
    if candidates.shape[1] < k:
        return np.full(len(candidates), -np.inf, np.float32)
    return -np.partition(-candidates, k - 1, axis=1)[:, k - 1]


def top_similarities(queries: np.ndarray, index, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of each query in a FAISS ``index``: (sims, rows), ``-inf`` / -1 where none."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(queries) == 0 or index.ntotal == 0 or k <= 0:
        return np.full((len(queries), max(k, 0)), -np.inf, np.float32), np.full((len(queries), max(k, 0)), -1, np.int64)
    sims, rows = index.search(queries, min(k, index.ntotal))
    return np.where(rows >= 0, sims, -np.inf).astype(np.float32), rows


EXACT_MAX = 50_000  # sets up to this size are searched exactly, larger ones by IVF
IVF_NPROBE = 32


def similarity_index(vectors: np.ndarray, exact_max: int = EXACT_MAX, seed: int = 0):
    """An inner-product FAISS index over ``vectors``: exact (flat) for up to ``exact_max`` of them, else
    IVF-Flat with 4 sqrt(n) lists trained on a sample and searched with ``IVF_NPROBE`` lists. The known
    non-landmarks of a GLDv2-scale store (hundreds of thousands of photos the object prior flags), each
    looking for its nearest other, are then searched in ANN time instead of n^2 inner products."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    index: faiss.Index
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, min(n, 64 * nlist), replace=False)
        ivf.train(vectors[np.sort(sample)])
        ivf.nprobe = IVF_NPROBE
        index = ivf
    index.add(vectors)
    return index


def distractor_scores(
    queries: np.ndarray,
    distractors: np.ndarray,
    k: int = 3,
    query_ids: Sequence[str] | None = None,
    distractor_ids: Sequence[str] | None = None,
) -> np.ndarray:
    """For each query, the minimum of its top-``k`` similarities to the distractor photos.

    A query that is itself one of the distractors (same id) is not compared with itself. With fewer
    than ``k`` distractors the score is ``-inf`` (the filter cannot fire).
    """
    distractors = np.ascontiguousarray(distractors, dtype=np.float32)
    if len(queries) == 0 or len(distractors) < k:
        return np.full(len(queries), -np.inf, np.float32)
    ids_given = query_ids is not None and distractor_ids is not None
    sims, rows = top_similarities(queries, similarity_index(distractors), k + int(ids_given))
    if query_ids is not None and distractor_ids is not None:  # ids_given
        dids = np.asarray(list(distractor_ids), dtype=object)
        same = (rows >= 0) & (dids[np.clip(rows, 0, None)] == np.asarray(list(query_ids), dtype=object)[:, None])
        sims = np.where(same, -np.inf, sims)
    return min_of_top_k(sims, k)


def onnx_detector(cfg: RecognitionConfig) -> OnnxDetector:
    """``recognition.detector`` naming an ONNX model file, with ``detector_labels`` and ``detector_roles``."""
    if not cfg.detector or not cfg.detector_labels or not cfg.detector_roles:
        raise ValueError("recognition.detector needs recognition.detector_labels and recognition.detector_roles")
    return OnnxDetector(cfg.detector, cfg.detector_labels, cfg.detector_roles)
