"""The quality suite: ``landmark evaluate`` on every dev set at once, judged side by side.

A change to the pipeline is judged on all the sets together (dense, sparse, unlabelled, hard
viewpoint), never on one: a stage that lifts one set and lowers another is not an improvement. For
each set the suite keeps the stage-by-stage rows of the submitted retrieval ranking (plain kNN, then
each stage that is on) and of recognition (kNN only, then each stage), and checks the rules of
"robust by default":

* the submitted mAP@100 is not below plain kNN's, nor the configured pipeline's GAP below kNN only
  (``SLACK`` of noise allowed);
* no stage of the pipeline as run lowers its set by more than ``ROW_FLOOR``.

:func:`run_suite` evaluates, :func:`summarize` reads one ``report.json``, :func:`render` prints.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..data.manifests import DatasetError
from ..utils.io import atomic_write_json
from .run import evaluate_gldv2, evaluation_plan

log = logging.getLogger(__name__)

SLACK = 0.005  # noise allowed between the submitted result and plain kNN
ROW_FLOOR = -0.01  # no stage of the pipeline as run may lower its set by more than this


@dataclass
class Found:
    """The evaluable datasets under a folder, and those skipped with the reason."""

    roots: list[Path]
    skipped: dict[str, str] = field(default_factory=dict)


def find_datasets(base: str | Path) -> Found:
    """Every sub-folder of ``base`` that ``landmark evaluate`` can score (GLDv2 layout with a test
    split and a solution), sorted by name; the others with the reason."""
    base = Path(base)
    if not base.is_dir():
        raise DatasetError(f"{base}: no such folder of datasets")
    found = Found([])
    for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            evaluation_plan(sub)
        except DatasetError as exc:
            found.skipped[sub.name] = str(exc)
            continue
        found.roots.append(sub)
    return found


def summarize(report: Mapping[str, Any]) -> dict[str, Any]:
    """One set's figures from its ``report.json``: headline metrics, the stage rows, and the checks."""
    m = report["metrics"]
    stages = m.get("retrieval_stages") or []
    recognition = [r for r in m.get("recognition_ablation") or [] if r.get("gap") is not None]
    knn = next((r for r in recognition if r["stage"] == "kNN only"), None)
    configured = recognition[-1] if recognition else None  # the rows add the stages that are on
    scored = [r for r in stages if r["map"] is not None]
    summary = {
        "gap": m.get("gap"),
        "accuracy": m.get("accuracy"),
        "map@100": m.get("map@100"),
        "plain_knn_map@100": scored[0]["map"] if scored else None,
        "knn_gap": knn["gap"] if knn else None,
        "knn_accuracy": knn["accuracy"] if knn else None,
        "retrieval_stages": stages,
        "recognition_stages": m.get("recognition_ablation") or [],
        "what_if": m.get("ablation") or [],
        "skipped": m.get("skipped") or {},
        "queries": m.get("queries"),
        "retrieval_queries": m.get("retrieval_queries"),
        "landmark_queries": m.get("landmark_queries"),
        "calibration": report.get("calibration_decisions") or {},
    }
    summary["checks"] = checks(summary, configured)
    return summary


def checks(summary: Mapping[str, Any], configured: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The rules of the module docstring for one set: each with its figures and whether it holds."""
    out = []
    plain, submitted = summary["plain_knn_map@100"], summary["map@100"]
    if plain is not None and submitted is not None:
        out.append(
            {"rule": "submitted mAP@100 >= plain kNN", "value": submitted - plain, "ok": submitted >= plain - SLACK}
        )
    if summary["knn_gap"] is not None and configured is not None:
        out.append(
            {
                "rule": "pipeline GAP >= kNN-only GAP",
                "value": configured["gap"] - summary["knn_gap"],
                "ok": configured["gap"] >= summary["knn_gap"] - SLACK,
            }
        )
    for row in summary["retrieval_stages"]:
        if row.get("delta") is not None:
            out.append(
                {
                    "rule": f"retrieval {row['stage']} >= {ROW_FLOOR}",
                    "value": row["delta"],
                    "ok": row["delta"] >= ROW_FLOOR,
                }
            )
    prev = None
    for row in summary["recognition_stages"]:  # stages that are off have no figures and are not checked
        if row.get("gap") is None or row["stage"].startswith("kNN only, global"):
            continue
        if prev is not None:
            delta = row["gap"] - prev
            out.append({"rule": f"recognition {row['stage']} >= {ROW_FLOOR}", "value": delta, "ok": delta >= ROW_FLOOR})
        prev = row["gap"]
    return out


def run_suite(
    roots: Sequence[str | Path],
    out_dir: str | Path,
    config: Callable[[], Config] | Config | None = None,
    *,
    progress: bool | None = None,
    calibrate: bool | None = None,
    overwrite: bool = False,
    on_set: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """``landmark evaluate`` on each of ``roots`` into ``out_dir/<name>/`` (stores are kept and reused
    by the next run with the same configuration), the summary of each, written to
    ``out_dir/quality.json`` after every set (a killed run keeps the sets it finished)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suite: dict[str, Any] = {
        "sets": {},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "rules": {"slack": SLACK, "row_floor": ROW_FLOOR},
    }
    for root in map(Path, roots):
        t0 = time.perf_counter()
        cfg = config() if callable(config) else config
        report = evaluate_gldv2(root, out / root.name, cfg, progress=progress, calibrate=calibrate, overwrite=overwrite)
        summary = summarize(report) | {"root": str(root), "seconds": round(time.perf_counter() - t0, 1)}
        suite["sets"][root.name] = summary
        suite["config"] = report["config"]
        atomic_write_json(out / "quality.json", suite)
        if on_set is not None:
            on_set(root.name, summary)
    return suite


def _f(x: float | None, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.4f}" if sign else f"{x:.4f}"


def render(suite: Mapping[str, Any], console) -> None:
    """The side-by-side table of every set, then one table of stages per set (rich ``console``)."""
    from rich.table import Table

    sets = suite["sets"]
    side = Table(title="quality suite: every set side by side", title_justify="left")
    for col in ("set", "plain kNN mAP@100", "submitted mAP@100", "kNN-only GAP", "pipeline GAP", "accuracy", "checks"):
        side.add_column(col)
    for name, s in sets.items():
        failed = [c for c in s["checks"] if not c["ok"]]
        side.add_row(
            name,
            _f(s["plain_knn_map@100"]),
            _f(s["map@100"]),
            _f(s["knn_gap"]),
            _f(s["gap"]),
            _f(s["accuracy"]),
            "ok" if not failed else f"[red]{len(failed)} failed[/]",
        )
    console.print(side)
    for name, s in sets.items():
        t = Table(title=f"{name}: the submitted pipeline stage by stage", title_justify="left")
        for col in ("stage", "mAP@100", "change", "note"):
            t.add_column(col)
        for r in s["retrieval_stages"]:
            t.add_row(r["stage"], _f(r["map"]), _f(r["delta"], True), r.get("note", ""))
        for r in s["recognition_stages"]:
            t.add_row(
                f"recognition: {r['stage']}",
                f"GAP {_f(r['gap'])}",
                "-" if r.get("accuracy") is None else f"acc {r['accuracy']:.4f}",
                r.get("note", ""),
            )
        console.print(t)
        for part, why in s["skipped"].items():
            console.print(f"  [yellow]{name}: {part} not scored:[/] {why}")
        for c in s["checks"]:
            if not c["ok"]:
                console.print(f"  [red]{name}: {c['rule']} fails ({c['value']:+.4f})[/]")
