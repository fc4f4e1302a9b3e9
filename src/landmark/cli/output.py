"""How the commands print: tables of ablations, failures, renamed photos, calibration summaries."""

from __future__ import annotations

from rich.table import Table

from .app import err, out

GET_DATA_HELP = """Point landmark at a dataset in the official Google Landmarks v2 layout
(train.csv, index.csv, test.csv, {split}/a/b/c/{id}.jpg, recognition_solution.csv, retrieval_solution.csv).
GLDv2 is published by the Common Visual Data Foundation (github.com/cvdfoundation/google-landmark).
Fetch it (or the first TARs of each split) with: landmark download /path/to/gldv2 [--parts 0-1]
then run: landmark evaluate /path/to/gldv2
or set LANDMARK_DATA=/path/to/gldv2 and run: make demo"""


def landmark_label(landmark_id, name) -> str:
    if landmark_id is None:
        return "-"
    return f"{landmark_id} ({name})" if name else str(landmark_id)


def print_ablation(rows) -> None:
    table = Table(title="retrieval ablation (mAP@100 on test, each step cumulative)", title_justify="left")
    for col in ("step", "mAP@100", "change", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["step"],
            "-" if r["map"] is None else f"{r['map']:.4f}",
            "" if r["delta"] is None else f"{r['delta']:+.4f}",
            r.get("note", ""),
        )
    out.print(table)


def print_failures(failures) -> None:
    if not failures:
        return
    err.print(f"[yellow]{len(failures)} photo(s) could not be read and were skipped:[/]")
    for f in failures[:20]:
        err.print(f"  {f.path}: {f.reason}")
    if len(failures) > 20:
        err.print(f"  ... and {len(failures) - 20} more (see the report)")


def print_renamed(renamed) -> None:
    """The photos kept under a new id because theirs named another stored photo: old id -> new id."""
    if not renamed:
        return
    out.print(
        f"[yellow]{len(renamed)} photo(s) kept under a new id (theirs names another stored photo, "
        f"with other content):[/]"
    )
    for r in renamed[:20]:
        out.print(f"  {r.path}: {r.id} -> {r.new_id}", markup=False, highlight=False)
    if len(renamed) > 20:
        out.print(f"  ... and {len(renamed) - 20} more")


def renamed_note(renamed) -> str:
    return f" ({len(renamed)} under a new id)" if renamed else ""


def calibration_summary(fitted: dict) -> str:
    """One line for the reports of :meth:`Landmarks.calibrate`."""
    rec, exp, cat = fitted["recognition"], fitted["expansion"], fitted["category"]
    parts = [
        f"{k} {('on' if v else 'off') if isinstance(v, bool) else format(v, '.3f')}"
        for k, v in rec["thresholds"].items()
    ]
    if exp:
        parts.append(f"expansion.threshold {exp['threshold']:.2f}")
    if cat:
        parts.append(
            "category re-rank " + (f"on, min_similarity {cat['min_similarity']:.2f}" if cat["enabled"] else "off")
        )
    return f"calibrated on {rec['validation']['landmark_queries']} validation photos: " + ", ".join(parts)


def print_recognition_ablation(rows) -> None:
    if not rows:
        return
    table = Table(title="recognition ablation (Baidu GLR19 §3), test split", title_justify="left")
    for col in ("stage", "GAP", "accuracy", "filtered as non-landmark"):
        table.add_column(col)
    for r in rows:
        if r["gap"] is None:
            table.add_row(r["stage"], "-", "-", r.get("note", ""))
        else:
            table.add_row(r["stage"], f"{r['gap']:.4f}", f"{r['accuracy']:.4f}", str(r.get("filtered", "")))
    out.print(table)
