"""Datasets as lists of records: GLDv2-layout roots, plain folders, and photos named on a command line.

A GLDv2 root holds ``{split}.csv`` next to a ``{split}/`` folder whose photos live at
``{split}/a/b/c/{id}.jpg`` (``a``, ``b``, ``c`` the first three characters of the id), plus the
optional ``label_names.csv`` and the Kaggle ``recognition_solution.csv`` / ``retrieval_solution.csv``.
A plain folder holds one sub-folder per landmark, or just photos (unlabelled).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import LandmarkError

GLDV2_SPLITS = ("train", "index", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
_MAX_LISTED = 10  # items named in an error message that lists missing photos or unknown ids

log = logging.getLogger(__name__)
_warned_repeats: set[str] = set()  # CSV files whose repeated ids were already reported


class DatasetError(LandmarkError, ValueError):
    """A dataset that cannot be read: the message names the file and what is wrong with it."""


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One photo: its id (GLDv2 hex id, or path relative to a folder root), its path and its label."""

    id: str
    path: Path
    landmark_id: int | None = None


@dataclass
class Manifest:
    """The photos of one dataset split, in a deterministic order."""

    name: str
    root: Path
    records: list[ImageRecord]
    label_names: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.records[index]

    @property
    def labelled(self) -> bool:
        """Whether any record carries a landmark id."""
        return any(r.landmark_id is not None for r in self.records)

    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def subset(self, ids_or_predicate: Iterable[str] | Callable[[ImageRecord], bool]) -> Manifest:
        """The records whose id is in the given ids (all must exist), or that satisfy a predicate; order kept."""
        if callable(ids_or_predicate):
            records = [r for r in self.records if ids_or_predicate(r)]
        elif isinstance(ids_or_predicate, str):
            raise TypeError("subset() takes an iterable of ids or a predicate, not a single id")
        else:
            wanted = set(ids_or_predicate)
            unknown = wanted.difference(self.ids())
            if unknown:
                raise DatasetError(f"{self.name}: {len(unknown)} unknown id(s):{_listing(sorted(unknown))}")
            records = [r for r in self.records if r.id in wanted]
        return Manifest(self.name, self.root, records, dict(self.label_names))


# -- GLDv2 ---------------------------------------------------------------------------------------


def gldv2_image_path(root: str | os.PathLike[str], split: str, image_id: str) -> Path:
    """Where GLDv2 keeps photo ``image_id`` of ``split``: ``root/split/a/b/c/{id}.jpg``."""
    return Path(root, split) / _gldv2_relpath(image_id)


def _gldv2_relpath(image_id: str) -> str:
    return f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


_LINK_STUB_MAX = 4096  # bytes: a file this small whose one line names an existing relative path is a link stub
_LINK_HOPS = 8


def dataset_entry(root: str | os.PathLike[str], name: str) -> Path:
    """``root / name``, following link stubs: where a dataset's file or folder is a symbolic link that
    was copied as a small text file holding the link's relative target (git with ``core.symlinks``
    off, archives, some sync tools), the path it names, relative to the stub's folder. Real symbolic
    links need nothing (the OS follows them); anything else is returned as it is."""
    path = Path(root) / name
    for _ in range(_LINK_HOPS):
        target = _stub_target(path)
        if target is None:
            return path
        path = target
    raise DatasetError(f"{Path(root) / name}: more than {_LINK_HOPS} link stubs in a row (a loop?)")


def _stub_target(path: Path) -> Path | None:
    """The existing path a link stub at ``path`` names, else None."""
    try:
        if not path.is_file() or path.stat().st_size > _LINK_STUB_MAX:
            return None
        text = path.read_bytes()
    except OSError:
        return None
    try:
        line = text.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not line or "\n" in line or "," in line or "\0" in line or Path(line).is_absolute():
        return None
    target = path.parent / line
    return target if target.exists() and target != path else None


def is_gldv2(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` has at least one GLDv2 split: ``{split}.csv`` next to a ``{split}/`` folder."""
    return any(has_gldv2_split(root, s) for s in GLDV2_SPLITS)


def has_gldv2_split(root: str | os.PathLike[str], split: str) -> bool:
    """Whether ``root`` has GLDv2 split ``split``: ``{split}.csv`` next to a ``{split}/`` folder (link stubs
    followed)."""
    return dataset_entry(root, f"{split}.csv").is_file() and dataset_entry(root, split).is_dir()


def read_gldv2(root: str | os.PathLike[str], split: str, *, check_files: bool = False) -> Manifest:
    """The records of one GLDv2 split; ``train`` is labelled, ``index`` and ``test`` are not.

    With ``check_files`` every photo must exist (one ``stat`` per photo, so off by default).
    """
    if split not in GLDV2_SPLITS:
        raise DatasetError(f"unknown GLDv2 split {split!r} (expected one of {', '.join(GLDV2_SPLITS)})")
    root = Path(root)
    csv_path = dataset_entry(root, f"{split}.csv")
    needed = ("id", "landmark_id") if split == "train" else ("id",)
    split_dir = dataset_entry(root, split)  # joined once: ``split_dir / relpath`` is the fastest Path for 4M rows
    records = []
    seen: set[str] = set()
    duplicates = 0
    with _csv_rows(csv_path, needed) as rows:
        for line, cells in rows:
            image_id = cells[0]
            if len(image_id) < 3 or "/" in image_id or "\\" in image_id:
                raise DatasetError(f"{csv_path}, line {line}: bad id {image_id!r} (expected a GLDv2 hex id)")
            if image_id in seen:  # the published CSVs repeat a few ids: keep the first row
                duplicates += 1
                continue
            seen.add(image_id)
            label = _parse_int(cells[1], csv_path, line, "landmark_id") if split == "train" else None
            records.append(ImageRecord(image_id, split_dir / _gldv2_relpath(image_id), label))
    if duplicates and str(csv_path) not in _warned_repeats:  # said once per file, however often it is read
        _warned_repeats.add(str(csv_path))
        log.warning("%s: %d repeated id(s) ignored (first row kept)", csv_path, duplicates)
    if check_files:
        missing = [str(r.path) for r in records if not r.path.is_file()]
        if missing:
            raise DatasetError(
                f"{split_dir}: {len(missing)} of {len(records)} photos of {csv_path.name} are "
                f"missing:{_listing(missing)}"
            )
    return Manifest(split, root, records, _read_label_names(dataset_entry(root, "label_names.csv")))


def check_split_ids(root: str | os.PathLike[str], splits: Sequence[str], queries: Sequence[str] = ()) -> None:
    """Refuse a GLDv2 root whose database ``splits`` share photo ids; warn where ``queries`` splits
    share ids with them. Reads only the id column of each CSV, so it is cheap to run before any work.

    A store keys photos by id: a photo of ``index.csv`` whose id is also in ``train.csv`` would be
    taken for the stored train photo and dropped, so that is a :class:`DatasetError` naming the two
    CSV files and the ids (the first few and how many). Queries (``test``) are never stored, and a
    dataset whose queries are also database photos (Revisited Oxford / Paris made into this layout)
    is legitimate, so there it is a warning. Splits the root does not have are left out.
    """
    root = Path(root)
    ids: dict[str, set[str]] = {}
    for split in dict.fromkeys([*splits, *queries]):
        if split in GLDV2_SPLITS and has_gldv2_split(root, split):
            with _csv_rows(dataset_entry(root, f"{split}.csv"), ("id",)) as rows:
                ids[split] = {cells[0] for _, cells in rows}
    database = [s for s in dict.fromkeys(splits) if s in ids]
    for i, a in enumerate(database):
        for b in database[i + 1 :]:
            shared = sorted(ids[a] & ids[b])
            if shared:
                raise DatasetError(
                    f"{dataset_entry(root, f'{a}.csv')} and {dataset_entry(root, f'{b}.csv')} share {len(shared)} "
                    f"photo id(s); a store keys photos by id, so one photo of each pair would be lost. Give them "
                    f"distinct ids, or build one of the splits (--split):{_listing(shared)}"
                )
    for q in (s for s in dict.fromkeys(queries) if s in ids and s not in database):
        for a in database:
            shared = sorted(ids[q] & ids[a])
            if shared:
                log.warning(
                    "%s and %s share %d photo id(s): queries that are also database photos (right where "
                    "the queries are drawn from the database, otherwise give them distinct ids):%s",
                    dataset_entry(root, f"{q}.csv"),
                    dataset_entry(root, f"{a}.csv"),
                    len(shared),
                    _listing(shared),
                )


@dataclass
class Solution:
    """The Kaggle ground truth of the GLDv2 test split (rows marked ``Ignored`` dropped)."""

    recognition: dict[str, int | None]  # test id -> its (first) landmark id, None for a non-landmark
    recognition_all: dict[str, set[int]]  # test id -> all its landmark ids, empty for a non-landmark
    retrieval: dict[str, list[str]]  # test id -> the relevant index ids
    usage: dict[str, str]  # test id -> "Public", "Private", ...

    def restricted(self, ids: Iterable[str]) -> Solution:
        """The ground truth of the queries in ``ids`` only (e.g. the test photos actually downloaded)."""
        keep = set(ids)
        return Solution(
            _only(self.recognition, keep),
            _only(self.recognition_all, keep),
            _only(self.retrieval, keep),
            _only(self.usage, keep),
        )


_V = TypeVar("_V")


def _only(d: dict[str, _V], keep: set[str]) -> dict[str, _V]:
    return {k: v for k, v in d.items() if k in keep}


def read_gldv2_solution(root: str | os.PathLike[str]) -> Solution:
    """Read ``recognition_solution.csv`` and ``retrieval_solution.csv``; a missing file gives empty dicts."""
    root = Path(root)
    solution = Solution({}, {}, {}, {})
    rec_path, ret_path = dataset_entry(root, "recognition_solution.csv"), dataset_entry(root, "retrieval_solution.csv")
    if rec_path.is_file():
        with _csv_rows(rec_path, ("id", "landmarks", "Usage")) as rows:
            for line, (test_id, cell, usage) in rows:
                if usage == "Ignored":
                    continue
                labels = [_parse_int(v, rec_path, line, "landmarks") for v in cell.split()]
                solution.recognition[test_id] = labels[0] if labels else None
                solution.recognition_all[test_id] = set(labels)
                solution.usage[test_id] = usage
    if ret_path.is_file():
        with _csv_rows(ret_path, ("id", "images", "Usage")) as rows:
            for _, (test_id, cell, usage) in rows:
                if usage == "Ignored":
                    continue
                solution.retrieval[test_id] = cell.split()
                solution.usage.setdefault(test_id, usage)
    return solution


# -- folders and command-line photos ----------------------------------------------------------


def read_folder(root: str | os.PathLike[str], *, labelled: bool | None = None) -> Manifest:
    """The photos under ``root`` (ids: paths relative to it, with extension), sorted by id.

    Each sub-folder holding photos (at any depth) is one landmark: its id is the folder name when
    that is an integer, otherwise the smallest free ids in sorted name order; ``label_names`` maps
    ids to folder names. Photos directly in ``root`` are unlabelled, and so is everything when
    ``root`` has no such sub-folder or ``labelled`` is False. Hidden files and folders are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: {'not a directory' if root.exists() else 'no such directory'}")
    by_folder: dict[str, list[Path]] = {}
    for path in _walk_images(root):
        rel = path.relative_to(root)
        by_folder.setdefault(rel.parts[0] if len(rel.parts) > 1 else "", []).append(path)
    if not by_folder:
        raise DatasetError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    folders = sorted(f for f in by_folder if f)
    if labelled and not folders:
        raise DatasetError(f"{root}: no sub-folders with images, so no landmark labels")
    ids = _folder_ids(root, folders) if folders and labelled is not False else {}
    records = [
        ImageRecord(p.relative_to(root).as_posix(), p, ids.get(folder))
        for folder, paths in by_folder.items()
        for p in paths
    ]
    records.sort(key=lambda r: r.id)
    return Manifest(root.resolve().name, root, records, {i: f for f, i in ids.items()})


def read_dataset(root: str | os.PathLike[str], split: str | None = None) -> Manifest:
    """A GLDv2 split (``train`` by default) when ``root`` has that layout, else the folder's photos."""
    root = Path(root)
    if is_gldv2(root):
        return read_gldv2(root, split or "train")
    if split is not None:
        raise DatasetError(f"{root}: a plain folder has no split {split!r} (splits need the GLDv2 layout)")
    return read_folder(root)


def read_photos(paths: Sequence[str | os.PathLike[str]]) -> Manifest:
    """Unlabelled records for files and folders named on a command line.

    A file's id is its name without extension, a folder's photos have ids relative to it; an id
    already taken falls back to the path as given, and a path given twice is read once. A path that
    does not exist stays a record, so that reading it fails for that photo alone, as for any
    unreadable photo of a batch; when none of the paths exists, that is an error here.
    """
    if not paths:
        raise DatasetError("no photos given")
    if not any(Path(p).exists() for p in paths):
        missing = ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise DatasetError(f"{missing}: no such file or directory")
    records: list[ImageRecord] = []
    for given in map(Path, paths):
        if given.is_dir():
            records += read_folder(given, labelled=False).records
        else:
            records.append(ImageRecord(given.stem, given))
    unique: dict[str, ImageRecord] = {}
    seen_paths: set[Path] = set()
    for r in records:
        if r.path in seen_paths:
            continue
        seen_paths.add(r.path)
        image_id = r.id if r.id not in unique else r.path.as_posix()
        if image_id in unique:
            raise DatasetError(f"{r.path}: its id {image_id!r} is already taken by {unique[image_id].path}")
        unique[image_id] = ImageRecord(image_id, r.path)
    parents = [p if p.is_dir() else p.parent for p in map(Path, paths)]
    root = Path(os.path.commonpath([os.path.abspath(p) for p in parents]))
    return Manifest("photos", root, list(unique.values()))


# -- helpers -----------------------------------------------------------------------------------


@contextmanager
def _csv_rows(path: Path, columns: Sequence[str]) -> Iterator[Iterator[tuple[int, list[str]]]]:
    """``with _csv_rows(path, columns) as rows``: ``(line number, cells in columns order)`` per data row."""
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    with fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise DatasetError(f"{path}: empty file (expected a header row with {', '.join(columns)})")
        missing = [c for c in columns if c not in header]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (header is: {', '.join(header)})")
        yield _data_rows(path, reader, [header.index(c) for c in columns])


def _data_rows(path: Path, reader: Any, index: list[int]) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows of a ``csv.reader`` (its ``line_num`` names the line in errors)."""
    width = max(index) + 1
    try:
        for row in reader:
            if not row:
                continue
            if len(row) < width:
                raise DatasetError(f"{path}, line {reader.line_num}: expected at least {width} columns, got {len(row)}")
            yield reader.line_num, [row[i] for i in index]
    except csv.Error as exc:
        raise DatasetError(f"{path}, line {reader.line_num}: malformed CSV: {exc}") from None


def _listing(items: Sequence[str]) -> str:
    """The first few items, one per line, and how many more there are."""
    shown = "".join(f"\n  {item}" for item in items[:_MAX_LISTED])
    return shown + (f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _parse_int(cell: str, path: Path, line: int, column: str) -> int:
    try:
        return int(cell)
    except ValueError:
        raise DatasetError(f"{path}, line {line}: bad {column} {cell!r} (expected an integer)") from None


def _read_label_names(path: Path) -> dict[int, str]:
    """``landmark_id,name`` rows of an optional ``label_names.csv``."""
    if not path.is_file():
        return {}
    with _csv_rows(path, ("landmark_id", "name")) as rows:
        return {_parse_int(lid, path, line, "landmark_id"): name for line, (lid, name) in rows}


def _walk_images(root: Path) -> Iterator[Path]:
    """Image files under ``root`` at any depth: hidden entries skipped, each real folder visited once."""
    seen: set[str] = set()

    def fail(exc: OSError) -> None:
        raise DatasetError(f"{exc.filename}: cannot list folder: {exc.strerror or exc}")

    for folder, dirs, files in os.walk(root, onerror=fail, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop or a second link to the same folder
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(folder, f)


def _folder_ids(root: Path, folders: list[str]) -> dict[str, int]:
    """Landmark id of each sub-folder: its integer name, else the smallest ids left, in name order."""
    ids: dict[str, int] = {}
    owner: dict[int, str] = {}
    for name in folders:
        if name.isascii() and name.isdigit():
            number = int(name)
            if number in owner:
                raise DatasetError(f"{root}: folders {owner[number]!r} and {name!r} both mean landmark {number}")
            ids[name], owner[number] = number, name
    free = (i for i in range(len(folders) + len(owner)) if i not in owner)
    for name in folders:
        if name not in ids:
            ids[name] = next(free)
    return ids


PSEUDO_LABEL_OFFSET = (
    1_000_000_000  # `landmark cluster`'s pseudo-landmark ids start here, far above GLDv2's (< 203,094)
)


def read_labels(path: str | os.PathLike[str]) -> dict[str, int]:
    """``id -> landmark_id`` from a CSV with those columns (``landmark cluster``'s output, or a train.csv);
    the first row of a repeated id wins."""
    path = Path(path)
    out: dict[str, int] = {}
    with _csv_rows(path, ("id", "landmark_id")) as rows:
        for line, (i, lab) in rows:
            out.setdefault(i, _parse_int(lab, path, line, "landmark_id"))
    return out
