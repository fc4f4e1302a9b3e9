"""Kaggle submission files for the GLR recognition and GLDv2 retrieval challenges."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence

from ..utils.io import atomic_write_text


def write_recognition_csv(
    path: str | os.PathLike[str], predictions: Mapping[str, tuple[int, float] | None], ids: Sequence[str] | None = None
) -> None:
    """``id,landmarks`` rows with ``"<landmark_id> <score>"``; an empty cell where there is no prediction."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "landmarks"])
    for q in ids if ids is not None else predictions:
        p = predictions.get(q)
        w.writerow([q, "" if p is None or p[0] is None else f"{int(p[0])} {p[1]:.6g}"])
    atomic_write_text(path, buf.getvalue())


def read_recognition_csv(path: str | os.PathLike[str]) -> dict[str, tuple[int, float] | None]:
    out: dict[str, tuple[int, float] | None] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            cell = (row.get("landmarks") or "").split()
            out[row["id"]] = (int(cell[0]), float(cell[1])) if len(cell) >= 2 else None
    return out


def write_retrieval_csv(
    path: str | os.PathLike[str], rankings: Mapping[str, Sequence[str]], ids: Sequence[str] | None = None, k: int = 100
) -> None:
    """``id,images`` rows with up to ``k`` space-separated index ids, best first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "images"])
    for q in ids if ids is not None else rankings:
        w.writerow([q, " ".join(list(rankings.get(q, ()))[:k])])
    atomic_write_text(path, buf.getvalue())


def read_retrieval_csv(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    with open(path, newline="") as fh:
        return {row["id"]: (row.get("images") or "").split() for row in csv.DictReader(fh)}
