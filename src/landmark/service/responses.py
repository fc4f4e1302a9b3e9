"""The JSON the service answers with: matches, recognitions, stored images; thumbnails' sizes."""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image

from ..api import Match, Recognition
from ..index.records import ImageRow

log = logging.getLogger(__name__)


def match_json(m: Match) -> dict[str, Any]:
    q = quote_id(m.id)
    return {
        "id": m.id,
        "score": round(float(m.score), 6),
        "landmark_id": m.landmark_id,
        "name": m.name,
        "thumbnail": f"/images/{q}/thumbnail",
        "url": f"/images/{q}",
        "inliers": m.inliers,
    }


def recognition_json(rec: Recognition) -> dict[str, Any]:
    """The fields of a recognition, including any later ones (grade, evidence) that are JSON-able."""
    from fastapi.encoders import jsonable_encoder

    out: dict[str, Any] = {
        "landmark_id": rec.landmark_id,
        "name": rec.name,
        "score": round(float(rec.score), 6),
        "votes": rec.votes,
        "grade": None,
    }
    skip = {"query", "landmark_id", "name", "score", "votes", "neighbours", "error"}
    for key, value in vars(rec).items():
        if key in skip or key.startswith("_"):
            continue
        try:
            out[key] = jsonable_encoder(value)
        except Exception:  # an extra field that is not JSON: leave it out of the answer
            log.debug("recognition field %s is not JSON-serialisable", key)
    out["matches"] = [match_json(m) for m in rec.neighbours]
    return out


def row_json(row: ImageRow, names: dict[int, str]) -> dict[str, Any]:
    q = quote_id(row.key)
    return {
        "id": row.key,
        "landmark_id": row.landmark_id,
        "name": names.get(row.landmark_id) if row.landmark_id is not None else None,
        "split": row.split,
        "width": row.width,
        "height": row.height,
        "thumbnail": f"/images/{q}/thumbnail",
        "photo": f"/images/{q}/photo",
    }


def quote_id(image_id: str) -> str:
    from urllib.parse import quote

    return quote(image_id, safe="")


def shrunk(img: Image.Image, side: int) -> Image.Image:
    if max(img.size) <= side:
        return img
    out = img.copy()
    out.thumbnail((side, side), Image.Resampling.LANCZOS)
    return out
