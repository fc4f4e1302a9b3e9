"""What the pipeline over a store returns: matches, search outputs, recognitions and build reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..features.extract import Failure

Photo = str | Path | Image.Image


@dataclass(frozen=True)
class Match:
    id: str
    score: float
    landmark_id: int | None
    name: str | None = None
    path: str | None = None
    inliers: int | None = None  # verified local-feature inliers when the result was re-ranked


@dataclass
class SearchOutput:
    query: str
    matches: list[Match] = field(default_factory=list)
    error: str | None = None


@dataclass
class Recognition:
    query: str
    landmark_id: int | None
    name: str | None
    score: float  # in [0, 1], ordered by grade then similarity (see docs/recognition.md)
    votes: int = 0
    neighbours: list[Match] = field(default_factory=list)
    error: str | None = None
    grade: str | None = None  # A1B1 ... A4B2 (Baidu §3.3), "non-landmark" when a filter fired
    evidence: dict = field(default_factory=dict)  # classifier top-k, filter decisions, grade parts


@dataclass(frozen=True)
class Renamed:
    """A photo kept under a new id because the id it came with names another stored photo."""

    id: str  # the id it came with (its file name, or its CSV id), taken in the store
    new_id: str  # the id it is stored under: ``{id}~{first 8 hex digits of its SHA-256}``
    path: str
    reason: str  # why it counts as another photo than the stored one

    def __str__(self) -> str:
        return f"{self.path}: id {self.id!r} is taken by {self.reason}; kept as {self.new_id!r}"


@dataclass(frozen=True)
class PhotoOutcome:
    """What an add did with one photo given to it (:meth:`~landmark.pipeline.Building.add_photos`)."""

    path: str
    id: str  # the id it is stored under (its new id when renamed; the id it came with when unreadable)
    # added (stored now), present (already stored: same id, same content), filled (already stored; its missing
    # local features made now, after an interrupted add or build) or unreadable (not stored)
    status: str
    note: str = ""  # why it was renamed, why it could not be read, why it has no local features


@dataclass
class BuildReport:
    added: dict[str, int] = field(default_factory=dict)  # split -> photos added (renamed ones included)
    skipped: dict[str, int] = field(default_factory=dict)  # split -> photos already in the store (same content)
    failures: list[Failure] = field(default_factory=list)
    renamed: list[Renamed] = field(default_factory=list)  # added under a new id: theirs was taken
    # split -> photos already stored whose missing local features were made now (an interrupted add or build)
    filled: dict[str, int] = field(default_factory=dict)
    photos: list[PhotoOutcome] = field(default_factory=list)  # each photo given, in order (add_photos only)


def query_names(photos: Sequence[Photo]) -> list[str]:
    """The name each query photo is reported under: its path, or ``image-<i>`` for an in-memory image."""
    return [
        p if isinstance(p, str) else (str(p) if isinstance(p, Path) else f"image-{i}") for i, p in enumerate(photos)
    ]
