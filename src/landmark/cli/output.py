"""How the commands print: result rows (a table on a terminal, else tab-separated; CSV or JSON when
asked), tables of ablations, failures, renamed photos, calibration summaries."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from .app import err, out


def output_format(as_json: bool, as_csv: bool) -> str:
    """``json``, ``csv``, ``table`` (stdout is a terminal) or ``tsv`` (it is not: a pipe or a file, where
    a table would cut long values: tab-separated rows keep every id whole)."""
    if as_json and as_csv:
        raise typer.BadParameter("give --json or --csv, not both")
    return "json" if as_json else "csv" if as_csv else "table" if out.is_terminal else "tsv"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def print_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str) -> None:
    """Rows as CSV (``fmt`` csv) or tab-separated (tsv), header first; None is an empty cell."""
    writer = csv.writer(sys.stdout, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(["" if v is None else v for v in row] for row in rows)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    """A rich table whose cells fold instead of being cut, and whose id columns (``id``, ``photo``) are not
    narrowed below their longest id: an id shown is an id whole, on one line where the terminal allows."""
    t = Table(title=title, title_justify="left")
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    for i, col in enumerate(columns):
        whole = col in ("id", "photo")
        t.add_column(col, overflow="fold", min_width=max([len(col)] + [len(r[i]) for r in rows]) if whole else None)
    for row in rows:
        t.add_row(*row)
    return t


def get_data_help(data: Path) -> str:
    """One paragraph for a dataset root that is missing or not in the GLDv2 layout: the three ways to get data."""
    what = "no dataset at" if not data.exists() else "not a Google Landmarks v2 (GLDv2) layout dataset:"
    return (
        f"{what} {data}. Get photos to work on in one of three ways: (1) point landmark at a copy of GLDv2 in its "
        "official layout (train.csv, index.csv, test.csv, the photo folders and the solution CSVs): "
        "LANDMARK_DATA=/path/to/gldv2 make demo, or landmark evaluate /path/to/gldv2; (2) download the first TAR of "
        "each GLDv2 split (about 1 GB each; GLDv2 is published by the CVDF, github.com/cvdfoundation/google-landmark) "
        "with landmark download /path/to/gldv2 --parts 0-0, then run (1) on it; (3) use a folder of your own photos: "
        "landmark index build /path/to/photos --store runs/store, then landmark search PHOTO --store runs/store or "
        "landmark recognize PHOTO --store runs/store."
    )


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
