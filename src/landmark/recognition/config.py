"""Config of the recognition stage (:class:`RecognitionConfig`, Baidu GLR19 §3), with its least values."""

from __future__ import annotations

from dataclasses import dataclass

from ..utils.config import check_values
from ..utils.registry import Registry


@dataclass
class RecognitionConfig:
    k: int = 5  # neighbours that vote (Baidu §3.1: top-5)
    regions: int = 3  # the query's R-MAC regions also look for neighbours (levels 2..regions of
    # l x l windows; 1 = the global descriptor only): a small or partial view of
    # a landmark finds its photos; each photo votes at its best similarity
    zoom: float = 1.0  # > 1: the query is also read at zoom x extract.image_size, and that global
    # descriptor and its regions join the views (a small landmark in a wide view);
    # a second forward pass at zoom^2 the pixels. Off: see docs/recognition.md

    # Baidu §3.2-3.3 (landmark.recognition.pipeline); every stage switchable. `landmark calibrate`
    # refits the thresholds on a validation split carved from train and writes them here.
    classifier: bool = True  # B1/B2: agreement with the trained model's head (if the model has one)
    classifier_topk: int = 5  # classifier candidates kept as evidence
    object_prior: bool = True  # ImageNet class-group prior of the backbone's classifier (pretrained one if fine-tuned)
    prior_groups: str | None = None  # class-group YAML (default: resources/imagenet_groups.yaml)
    prior_landmark_min: float = (
        0.3  # landmark classes >= this => landmark (kept); 0.3 / 0.6 as the paper's detector rule
    )
    prior_object_min: float = 0.6  # else non-landmark classes > this => non-landmark
    detector: str | None = None  # optional object detector: oidv4 (Open Images v4, `landmark install-detector`)
    # or an ONNX model (boxes, scores, labels outputs)
    detector_labels: str | None = None  # its class names, one per line
    detector_roles: str | None = None  # YAML {class name: landmark | uncertain | non_landmark} (oidv4: its own)
    detector_score_min: float = 0.3  # the paper's detector score threshold
    detector_area_min: float = 0.6  # ... and box / photo area ratio
    distractor_filter: bool = True  # min of top-k similarities to known non-landmarks > threshold
    distractor_k: int = 3
    distractor_threshold: float = 0.8
    evidence_overrules: bool = True  # a unanimous top-k vote (k of k) with >= evidence_inliers verified local
    # inliers to a neighbour of that landmark is kept: the object prior and the
    # distractor filter (similarity thresholds) do not overrule its own evidence
    evidence_inliers: int = 8  # verified inliers that show the landmark (rerank.verified_inliers: no false
    # positive among ~6,700 negative pairs of the train validation)
    grading: bool = True  # A1-A4 from the top-k neighbours
    t1: float = 0.9  # A1: min similarity of the predicted label's neighbours > t1
    t2: float = 0.85  # A2: max similarity of the predicted label > t2
    frequent_rerank: bool = True  # landmarks predicted > frequent_min times in A1B1 go first in a grade
    frequent_min: int = 5
    filtered: str = "demote"  # non-landmarks: demote (ranked below all others) | drop (no prediction)

    @property
    def views(self) -> tuple[int, float]:
        """The query views it recognises with, ``(regions, zoom)``: fitted thresholds depend on them."""
        return self.regions, float(self.zoom)

    @property
    def extra_views(self) -> bool:
        """Whether a query has views besides its global descriptor (regions, or the zoomed read)."""
        return self.regions > 1 or self.zoom > 1


# recognition.detector kinds by name (any other value is the path of an ONNX detector)
DETECTORS = Registry("recognition.detector", {"oidv4": "landmark.recognition.oidv4:oidv4_detector"})
FILTERED = ("demote", "drop")
MINIMUMS = {
    "k": 1,
    "regions": 1,
    "zoom": 1.0,
    "classifier_topk": 1,
    "distractor_k": 1,
    "evidence_inliers": 1,
    "frequent_min": 1,
}


def check_recognition(cfg: RecognitionConfig, where: str = "recognition") -> None:
    check_values(cfg, {"filtered": FILTERED}, MINIMUMS, prefix=f"{where}.")
