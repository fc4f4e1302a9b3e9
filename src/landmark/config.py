"""Typed configuration: the stages' own config dataclasses composed into one :class:`Config`, named
presets, and overrides from YAML or ``key=value`` strings.

A configuration is built as ``preset <- YAML file <- overrides``; each layer is a nested dict
merged into the dataclasses, and unknown keys or badly typed values are errors that name the key.
Each stage package owns its config, choices and checks (``landmark/<stage>/config.py``); this module
only composes them and imports no stage logic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .features.config import ExtractConfig, LocalConfig, WhiteningConfig, check_extract, check_local, check_whitening
from .index.config import IndexConfig, check_index
from .models.config import ModelConfig, check_models
from .recognition.config import RecognitionConfig, check_recognition
from .retrieval.config import (
    CategoryConfig,
    ExpansionConfig,
    RerankConfig,
    SearchConfig,
    check_category,
    check_expansion,
    check_rerank,
    check_search,
)
from .utils.config import ConfigError, explicit, layered, merge, parse_overrides, to_dict

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "CategoryConfig",
    "Config",
    "ConfigError",
    "ExpansionConfig",
    "ExtractConfig",
    "IndexConfig",
    "LocalConfig",
    "ModelConfig",
    "RecognitionConfig",
    "RerankConfig",
    "SearchConfig",
    "WhiteningConfig",
    "check",
    "config_from_dict",
    "explicit",
    "load_config",
    "merge",
    "parse_overrides",
    "to_dict",
]


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    ensemble: tuple[ModelConfig, ...] = ()  # more models whose L2-normalised descriptors follow `model`'s
    whitening: WhiteningConfig = field(default_factory=WhiteningConfig)
    expansion: ExpansionConfig = field(default_factory=ExpansionConfig)
    category: CategoryConfig = field(default_factory=CategoryConfig)
    # the dotted keys its preset, YAML file and overrides set (``load_config``); None: not known. Not saved.
    given: frozenset[str] | None = field(default=None, compare=False, repr=False, metadata={"saved": False})

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# Named presets: partial dicts over the defaults above.
def _learned_preset(
    kind: str, matcher: str, image_size: int, keypoints: int, *, top_k: int, batch_size: int | None = None
) -> dict[str, Any]:
    """A preset of learned local features: a verified photo needs 25 inliers (full boost at 100), and so does
    recognition's evidence; a query that verifies nothing upright is also tried turned by 90 and 270 degrees."""
    local: dict[str, Any] = {"kind": kind, "image_size": image_size, "max_keypoints": keypoints}
    if batch_size is not None:
        local["batch_size"] = batch_size
    return {
        "local": local,
        "rerank": {
            "matcher": matcher,
            "top_k": top_k,
            "min_inliers": 25,
            "saturation": 100,
            "verified_inliers": 25,
            "rotations": [90, 270],
        },
        "recognition": {"evidence_inliers": 25},
    }


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
    "aliked-lightglue": _learned_preset("aliked", "lightglue", 1024, 2048, top_k=100, batch_size=16),  # for a GPU
    "aliked-lightglue-cpu": _learned_preset("aliked", "lightglue", 640, 512, top_k=20),
    "xfeat-lighterglue-cpu": _learned_preset("xfeat", "lighterglue", 640, 1024, top_k=20),
    "lite2-gem-pcaw": {"whitening": {"kind": "pca"}},  # PCA even from few photos (the default, auto, needs > dim)
    "lite2-gem-nopca": {"whitening": {"kind": "none"}},  # the store keeps the network's own descriptors
    # Radenovic et al.'s learned whitening of the labelled photos; dim and shrinkage chosen on a validation
    # split of train (benchmarks/learned_whitening_validation.py)
    "lite2-gem-lw": {"whitening": {"kind": "learned", "learn_on": "train", "dim": 64, "shrinkage": 0.2}},
    "ensemble-gem-pcaw": {
        "ensemble": [{"backbone": "tf_efficientnet_lite1"}, {"backbone": "mobilenet_v2"}],
        "whitening": {"kind": "pca", "dim": 512},
    },  # the paper's 512-d (not validated here)
}
DEFAULT_PRESET = "lite2-gem"


def load_config(
    preset: str | None = None, file: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> Config:
    """Build a :class:`Config` from a preset name, an optional YAML file and overrides (checked by :func:`check`)."""
    return check(layered(Config(), PRESETS, preset or DEFAULT_PRESET, "preset", file, overrides))


def check(config: Config) -> Config:
    """``config`` if every choice names an option its stage has and every count is in range; else a
    :class:`ConfigError` naming the key, so that a wrong ``--set`` fails before any work is done
    (not half-way through a build) and without a traceback."""
    check_models([config.model], "model")
    check_models(config.ensemble, "ensemble")
    check_extract(config.extract)
    check_index(config.index)
    check_search(config.search)
    check_recognition(config.recognition)
    check_local(config.local)
    check_rerank(config.rerank)
    check_whitening(config.whitening)
    check_expansion(config.expansion)
    check_category(config.category)
    return config


def config_from_dict(data: Mapping[str, Any]) -> Config:
    return merge(Config(), data)
