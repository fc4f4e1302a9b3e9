"""The Revisited Oxford5k / Paris6k protocol (Radenovic et al., CVPR 2018): Easy / Medium / Hard mAP.

Ground truth comes in the revisitop format ``gnd_<dataset>.pkl``: ``imlist`` (database names),
``qimlist`` (query names) and per query ``bbx`` (x1, y1, x2, y2), ``easy``, ``hard``, ``junk``
(indices into ``imlist``). The three setups:

=======  ===================  ====================
setup    positives            ignored (junk)
=======  ===================  ====================
Easy     easy                 junk + hard
Medium   easy + hard          junk
Hard     hard                 junk + easy
=======  ===================  ====================

Ignored images are removed from the ranking before AP is computed; queries with no positive in a
setup are left out of its mean. AP is the trapezoidal rule over the positives' ranks, as in
revisitop: each positive at (0-based, junk-free) rank ``r`` being the ``j``-th (0-based) adds
``(j / r + (j + 1) / (r + 1)) / 2 / n_positives`` (``j / r`` read as 1 when ``r = 0``). mP@k counts
positives among the first ``min(k, last positive rank)`` results. Queries are cropped to ``bbx``.

The ``.pkl`` files are the dataset's own format; they are read with :mod:`pickle` here only, so
only read ground-truth files you trust.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import ImageError, load_image
from ..data.manifests import DatasetError, ImageRecord
from ..retrieval.expansion import dba as _dba
from ..retrieval.expansion import knn, query_expansion

DATASETS = ("roxford5k", "rparis6k")
SETUPS = ("easy", "medium", "hard")
KAPPAS = (1, 5, 10)


@dataclass(frozen=True)
class QueryTruth:
    bbx: tuple[float, ...]  # (x1, y1, x2, y2) as the file gives it
    easy: np.ndarray
    hard: np.ndarray
    junk: np.ndarray


@dataclass(frozen=True)
class RevisitedTruth:
    name: str
    imlist: list[str]
    qimlist: list[str]
    queries: list[QueryTruth] = field(repr=False)


def load_ground_truth(path: str | Path) -> RevisitedTruth:
    """Read ``gnd_<dataset>.pkl`` (revisitop format); errors name the file and what is wrong."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = pickle.load(fh)
        queries = [
            QueryTruth(
                tuple(float(v) for v in g["bbx"]),
                np.asarray(g["easy"], np.int64),
                np.asarray(g["hard"], np.int64),
                np.asarray(g["junk"], np.int64),
            )
            for g in raw["gnd"]
        ]
        truth = RevisitedTruth(path.stem.removeprefix("gnd_"), list(raw["imlist"]), list(raw["qimlist"]), queries)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage to the file is reported the same way
        raise DatasetError(f"{path}: not a revisitop ground-truth file ({type(exc).__name__}: {exc})") from None
    if len(truth.queries) != len(truth.qimlist):
        raise DatasetError(f"{path}: {len(truth.qimlist)} query names but {len(truth.queries)} ground-truth entries")
    return truth


def setup_sets(q: QueryTruth, setup: str) -> tuple[np.ndarray, np.ndarray]:
    """(positives, ignored) database indices of one query in ``setup`` (easy | medium | hard)."""
    if setup == "easy":
        return q.easy, np.concatenate([q.junk, q.hard])
    if setup == "medium":
        return np.concatenate([q.easy, q.hard]), q.junk
    if setup == "hard":
        return q.hard, np.concatenate([q.junk, q.easy])
    raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")


def positive_ranks(ranking: Sequence[int] | np.ndarray, positives: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """0-based ranks of the positives in ``ranking`` once the ignored images are taken out."""
    ranking = np.asarray(ranking, dtype=np.int64)
    pos = np.flatnonzero(np.isin(ranking, positives))
    junk = np.flatnonzero(np.isin(ranking, ignored) & ~np.isin(ranking, positives))
    return pos - np.searchsorted(junk, pos)


def average_precision(ranks: np.ndarray, n_positives: int) -> float:
    """revisitop's AP: trapezoidal rule over the (sorted, 0-based) ranks of the retrieved positives."""
    ranks = np.sort(np.asarray(ranks, dtype=np.float64))
    if n_positives <= 0:
        raise ValueError("average precision needs at least one positive")
    j = np.arange(len(ranks), dtype=np.float64)
    p0 = np.where(ranks == 0, 1.0, j / np.where(ranks == 0, 1.0, ranks))
    p1 = (j + 1) / (ranks + 1)
    return float(((p0 + p1) / 2).sum() / n_positives)


def precision_at(ranks: np.ndarray, kappas: Sequence[int] = KAPPAS) -> np.ndarray:
    """revisitop's mP@k per query: positives among the first ``min(k, last positive rank)`` results."""
    pos = np.sort(np.asarray(ranks, dtype=np.int64)) + 1
    out = np.zeros(len(kappas))
    if not len(pos):
        return out
    for i, k in enumerate(kappas):
        kq = min(int(pos.max()), int(k))
        out[i] = (pos <= kq).sum() / kq
    return out


def evaluate_rankings(
    rankings: Sequence[Sequence[int]] | np.ndarray, truth: RevisitedTruth, kappas: Sequence[int] = KAPPAS
) -> dict[str, dict[str, Any]]:
    """mAP and mP@k for each setup. ``rankings[i]`` are database indices for query ``i``, best first."""
    if len(rankings) != len(truth.queries):
        raise ValueError(f"{len(rankings)} rankings for {len(truth.queries)} queries")
    out: dict[str, dict[str, Any]] = {}
    for setup in SETUPS:
        aps, prs = [], []
        for ranking, q in zip(rankings, truth.queries):
            positives, ignored = setup_sets(q, setup)
            if not len(positives):
                aps.append(math.nan)
                continue
            r = positive_ranks(ranking, positives, ignored)
            aps.append(average_precision(r, len(positives)))
            prs.append(precision_at(r, kappas))
        valid = [a for a in aps if not math.isnan(a)]
        out[setup] = {
            "map": float(np.mean(valid)) if valid else 0.0,
            "aps": aps,
            **{f"mp@{k}": float(np.mean([p[i] for p in prs])) if prs else 0.0 for i, k in enumerate(kappas)},
        }
    return out


def crop_query(img: Image.Image, bbx: Sequence[float]) -> Image.Image:
    """The query region ``bbx = (x1, y1, x2, y2)`` in pixels, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in bbx)
    w, h = img.size
    box = (max(0, math.floor(x1)), max(0, math.floor(y1)), min(w, math.ceil(x2)), min(h, math.ceil(y2)))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"bounding box {tuple(bbx)} is empty inside a {w}x{h} image")
    return img.crop(box)


def dataset_paths(root: Path, name: str) -> tuple[Path, Path]:
    """``ROOT/<name>/gnd_<name>.pkl`` and ``ROOT/<name>/jpg`` (revisitop's layout)."""
    return root / name / f"gnd_{name}.pkl", root / name / "jpg"


def evaluate_revisited(
    root: str | Path,
    extractor,
    datasets: Sequence[str] = DATASETS,
    *,
    expansion: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Extract database and (cropped) query photos under ``root`` and score them on E/M/H.

    ``extractor`` is any :class:`~landmark.features.pipeline.Extractor`; ``expansion`` optionally
    ``{"dba": bool, "qe": bool}`` applies DBA / alpha-QE before the final ranking.
    """
    root = Path(root)
    report: dict[str, Any] = {}
    for name in datasets:
        gnd_path, jpg = dataset_paths(root, name)
        if not gnd_path.is_file():
            raise DatasetError(
                f"{gnd_path}: ground truth not found (expected revisitop's layout ROOT/{name}/gnd_{name}.pkl)"
            )
        truth = load_ground_truth(gnd_path)
        missing = [n for n in truth.imlist if not (jpg / f"{n}.jpg").is_file()]
        if missing:
            raise DatasetError(
                f"{jpg}: {len(missing)} of {len(truth.imlist)} database photos are missing "
                f"(e.g. {missing[0]}.jpg); download them with revisitop's download script"
            )
        items = [ImageRecord(n, jpg / f"{n}.jpg") for n in truth.imlist]
        db = extractor.extract(
            items,
            progress=progress,
            description=f"{name} database",
            cache_dir=Path(cache_dir) / name if cache_dir else None,
        )
        if db.failures:
            raise DatasetError(
                f"{jpg}: {len(db.failures)} database photos could not be read, "
                f"e.g. {db.failures[0].path}: {db.failures[0].reason}"
            )
        crops = []
        for qname, q in zip(truth.qimlist, truth.queries):
            path = jpg / f"{qname}.jpg"
            try:
                crops.append(crop_query(load_image(path), q.bbx))
            except (ImageError, ValueError) as exc:
                raise DatasetError(f"{path}: query photo unusable: {exc}") from None
        qvec = extractor.extract_images(crops)
        order = {n: i for i, n in enumerate(db.ids)}
        dbvec = db.vectors[[order[n] for n in truth.imlist]]
        exp = dict(expansion or {})
        if exp.get("dba"):
            dbvec = _dba(dbvec)
        if exp.get("qe"):
            qvec = query_expansion(qvec, dbvec)
        _, ranks = knn(qvec, dbvec, len(dbvec))
        res = evaluate_rankings(ranks, truth)
        report[name] = {s: {k: v for k, v in r.items() if k != "aps"} for s, r in res.items()}
    return report
