"""The recognition ablation of Baidu GLR19 §3 on one batch of evidence: GAP and accuracy per stage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..metrics import Truth, accuracy, global_average_precision
from ..recognition.config import RecognitionConfig
from ..recognition.pipeline import Decision, Evidence, ablation_configs, decide


def predictions_of(ev: Evidence, decisions: list[Decision]) -> dict[str, tuple[int, float] | None]:
    return {q: ((d.landmark_id, d.score) if d.landmark_id is not None else None) for q, d in zip(ev.ids, decisions)}


def recognition_ablation(
    ev: Evidence, cfg: RecognitionConfig, truth: Mapping[str, Truth], global_only: Evidence | None = None
) -> list[dict[str, Any]]:
    """One row per stage (kNN only, + classifier agreement, + object prior, + distractor filter,
    + grading, + frequent-landmark re-rank), each stage that ``cfg`` runs added to the ones above it
    (a stage that is off has a row without figures), so the last row with figures is the pipeline as
    run. With ``global_only`` (the same queries' evidence without their regions) a first row shows
    the kNN vote of the global descriptors alone."""
    rows = []
    configs = ablation_configs(cfg, ev.classifier is not None)
    if global_only is not None:
        knn_only = configs[0][1]
        assert knn_only is not None  # the kNN-only row always runs
        rows.append(_row(global_only, knn_only, truth, "kNN only, global descriptor (no regions, no zoom)", ""))
    for name, row_cfg, note in configs:
        if row_cfg is None:
            rows.append({"stage": name, "gap": None, "accuracy": None, "note": note})
            continue
        rows.append(_row(ev, row_cfg, truth, name, note))
    return rows


def _row(ev: Evidence, cfg: RecognitionConfig, truth: Mapping[str, Truth], name: str, note: str) -> dict[str, Any]:
    decisions = decide(ev, cfg)
    preds = predictions_of(ev, decisions)
    return {
        "stage": name,
        "gap": global_average_precision(preds, truth),
        "accuracy": accuracy(preds, truth),
        "filtered": sum(1 for d in decisions if d.grade == "non-landmark"),
        "note": note,
    }
