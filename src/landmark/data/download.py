"""Download Google Landmarks v2 into the layout ``landmark`` reads, verified and resumable.

What lands in ``root``::

    train.csv index.csv test.csv                    the split lists (restricted to the photos on disk, see below)
    label_names.csv                                 landmark_id,name from train_label_to_category.csv
    recognition_solution.csv retrieval_solution.csv the v2.1 ground truth of the test split
    {split}/a/b/c/{id}.jpg                          the photos, from the split's TAR files
    .download/                                      full CSVs, per-TAR done markers, partial downloads

Every TAR is checked against its published md5 before it is unpacked (members are unpacked with
``tarfile``'s ``data`` filter: no absolute paths, links or ``..``), and a marker is written only
after that, so a killed run resumes: finished TARs are skipped and a partial download continues
with an HTTP range request. When only some TARs of a split are fetched (``parts``), the split's CSV
lists just the photos that arrived; the complete list stays in ``.download/``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ..utils.io import atomic_path, atomic_write_text
from ..utils.progress import progress_bar
from .manifests import DatasetError

log = logging.getLogger(__name__)

GLDV2_URL = "https://s3.amazonaws.com/google-landmark"
GLDV2_TARS = {"train": 500, "index": 100, "test": 20}
_METADATA = {
    "train": {"train.csv": "metadata/train.csv", "train_label_to_category.csv": "metadata/train_label_to_category.csv"},
    "index": {"index.csv": "metadata/index.csv"},
    "test": {
        "test.csv": "metadata/test.csv",
        "recognition_solution.csv": "ground_truth/recognition_solution_v2.1.csv",
        "retrieval_solution.csv": "ground_truth/retrieval_solution_v2.1.csv",
    },
}
_CHUNK = 1 << 20


class DownloadError(DatasetError):
    """A download failed or a file did not verify; the message names the URL or file."""


@dataclass
class DownloadReport:
    downloaded: list[str] = field(default_factory=list)  # TARs fetched and unpacked by this run
    skipped: list[str] = field(default_factory=list)  # TARs already done by an earlier run
    photos: dict[str, int] = field(default_factory=dict)  # split -> photos listed in its CSV


def parse_parts(spec: str | None, split: str) -> list[int]:
    """``"0-4,7"`` -> [0, 1, 2, 3, 4, 7]; None -> every TAR of the split."""
    total = GLDV2_TARS[split]
    if not spec:
        return list(range(total))
    parts: set[int] = set()
    for item in spec.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise DatasetError(f"bad TAR range {item!r}; expected e.g. 0-4,7")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= total:
            raise DatasetError(f"TAR range {item!r} is outside 0-{total - 1} of the {split} split")
        parts.update(range(lo, hi + 1))
    return sorted(parts)


def download_gldv2(
    root: str | os.PathLike[str],
    splits: Sequence[str] = ("train", "index", "test"),
    *,
    parts: str | None = None,
    base_url: str = GLDV2_URL,
    keep_tars: bool = False,
    progress: bool | None = None,
    timeout: float = 120.0,
) -> DownloadReport:
    """Fetch the metadata, ground truth and TARs of ``splits`` into ``root`` (see the module doc)."""
    root = Path(root)
    work = root / ".download"
    report = DownloadReport()
    for split in splits:
        if split not in GLDV2_TARS:
            raise DatasetError(f"unknown GLDv2 split {split!r} (expected one of {', '.join(GLDV2_TARS)})")
        for name, remote in _METADATA[split].items():
            target = work / name
            if not target.is_file():
                _fetch(f"{base_url}/{remote}", target, timeout)
            if name.endswith("solution.csv"):
                shutil.copyfile(target, root / name)
        if split == "train":
            _write_label_names(work / "train_label_to_category.csv", root / "label_names.csv")
        for part in parse_parts(parts, split):
            tar_name = f"images_{part:03d}.tar"
            marker = work / "done" / f"{split}-{tar_name}.ids"
            if marker.is_file():
                report.skipped.append(f"{split}/{tar_name}")
            else:
                ids = _fetch_tar(base_url, split, tar_name, root, work, keep_tars, progress, timeout)
                atomic_write_text(marker, "\n".join(ids) + "\n")
                report.downloaded.append(f"{split}/{tar_name}")
        present: set[str] = set()
        for done in (work / "done").glob(f"{split}-images_*.ids"):  # TARs of earlier runs count too
            present.update(done.read_text().split())
        report.photos[split] = _write_split_csv(work / f"{split}.csv", root / f"{split}.csv", present)
    return report


def _fetch_tar(
    base_url: str, split: str, tar_name: str, root: Path, work: Path, keep: bool, progress: bool | None, timeout: float
) -> list[str]:
    md5_file = work / "md5" / split / f"md5.{tar_name}.txt"
    if not md5_file.is_file():
        _fetch(f"{base_url}/md5sum/{split}/md5.{tar_name[:-4]}.txt", md5_file, timeout)
    expected = md5_file.read_text().split()[0].lower() if md5_file.read_text().split() else ""
    if not re.fullmatch(r"[0-9a-f]{32}", expected):
        raise DownloadError(f"{md5_file}: not an md5 sum file")
    tar_path = work / split / tar_name
    url = f"{base_url}/{split}/{tar_name}"
    if not tar_path.is_file():
        _fetch(url, tar_path, timeout, progress=progress, description=f"{split}/{tar_name}")
    actual = _md5(tar_path)
    if actual != expected:
        tar_path.unlink()
        raise DownloadError(
            f"{url}: md5 {actual} does not match the published {expected}; the file was removed, run the download again"
        )
    ids = _unpack(tar_path, root / split)
    if not keep:
        tar_path.unlink()
    return ids


def _unpack(tar_path: Path, dest: Path) -> list[str]:
    """Unpack the JPEGs of a GLDv2 TAR under ``dest`` (a/b/c/id.jpg); returns the ids unpacked."""
    dest.mkdir(parents=True, exist_ok=True)
    ids = []
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = Path(member.name).parts
                name = parts[-1]
                if not name.endswith(".jpg"):
                    continue
                image_id = name[:-4]
                if len(image_id) < 3 or not re.fullmatch(r"[0-9a-zA-Z_-]+", image_id):
                    raise DownloadError(f"{tar_path}: unexpected member {member.name!r}")
                member.name = (
                    f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{name}"  # the layout, whatever the TAR's prefix
                )
                tar.extract(member, dest, filter="data")
                ids.append(image_id)
    except (tarfile.TarError, OSError) as exc:
        raise DownloadError(f"{tar_path}: cannot unpack ({exc})") from exc
    return ids


def _fetch(url: str, target: Path, timeout: float, *, progress: bool | None = False, description: str = "") -> None:
    """Download ``url`` to ``target`` atomically, continuing a ``.part`` file with a range request."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            os.replace(part, target)
            return
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(
            f"{url}: {getattr(exc, 'reason', exc)} (is the network reachable? --base-url points at a mirror)"
        ) from exc
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with (
            open(part, "ab" if resumed else "wb") as fh,
            progress_bar(description or Path(url).name, total=total, enabled=progress, completed=have) as bar,
        ):
            while chunk := response.read(_CHUNK):
                fh.write(chunk)
                bar.advance(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes; run the download again to resume")
    os.replace(part, target)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _write_split_csv(full: Path, target: Path, present: set[str]) -> int:
    """The rows of the split's full CSV whose photo arrived (all of them once every TAR is in)."""
    with open(full, newline="") as src:
        reader = csv.reader(src)
        header = next(reader, None)
        if not header or header[0] != "id":
            raise DownloadError(f"{full}: expected a CSV whose first column is id")
        rows = [r for r in reader if r and r[0] in present]
    with atomic_path(target) as tmp, open(tmp, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(header)
        w.writerows(rows)
    return len(rows)


def _write_label_names(categories: Path, target: Path) -> None:
    """``landmark_id,category`` (a Wikimedia category URL) -> ``landmark_id,name``."""
    with open(categories, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"landmark_id", "category"} <= set(rows[0]):
        raise DownloadError(f"{categories}: expected columns landmark_id,category")
    with atomic_path(target) as tmp, open(tmp, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["landmark_id", "name"])
        w.writerows((r["landmark_id"], category_name(r["category"])) for r in rows)


def category_name(url: str) -> str:
    """``http://commons.wikimedia.org/wiki/Category:Eiffel_Tower`` -> ``Eiffel_Tower``."""
    tail = unquote(url.rstrip("/").rsplit("/", 1)[-1])
    return tail.split(":", 1)[1] if tail.startswith("Category:") else tail


__all__ = [
    "GLDV2_TARS",
    "GLDV2_URL",
    "DownloadError",
    "DownloadReport",
    "category_name",
    "download_gldv2",
    "parse_parts",
]
