"""Where the photos of a manifest go in a store: new ones, ones already stored (same file or same
content), and ones whose id names another stored photo (kept under a new id, never dropped)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.manifests import ImageRecord
from ..features.extract import Failure
from ..index import Store, StoreError
from ..index.records import StoredFile, content_hash
from .results import Renamed


@dataclass
class Placement:
    """Where the photos of a manifest go in a store (:func:`place`)."""

    records: list[ImageRecord] = field(default_factory=list)  # each photo under its store id, skipped ones too
    todo: list[ImageRecord] = field(default_factory=list)  # those to extract and add
    renamed: list[Renamed] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)  # unreadable photos whose id is taken
    contents: dict[str, str] = field(default_factory=dict)  # store id -> content hash already computed


def place(store: Store, records: Sequence[ImageRecord]) -> Placement:
    """Sort photos into new ones, ones already stored, and ones whose id names another stored photo.

    A photo is already stored when the stored photo of its id has its content: it is the same file,
    unmodified since it was added (no file is read: a resumed build costs a ``stat`` per photo), or
    its bytes have the same SHA-256. Otherwise it is kept under ``{id}~{first 8 hex digits of its
    SHA-256}`` (16, then 64 digits if that is taken by yet another photo), so that adding it again
    finds it there. A photo stored before content hashes were kept gets its hash from its file, which
    is then recorded; when that file is gone the two cannot be compared and the new photo gets a new id.
    """
    stored = store.stored_files([r.id for r in records])
    out = Placement()
    taken = {r.id for r in records}
    backfill: dict[str, str] = {}
    for r in records:
        old = stored.get(r.id)
        if old is None:
            out.records.append(r)
            out.todo.append(r)
            continue
        if same_file(old, r.path):
            out.records.append(r)
            continue
        try:
            digest = content_hash(r.path)
        except OSError as exc:
            out.failures.append(
                Failure(
                    r.id,
                    str(r.path),
                    f"cannot read it to compare with the stored photo {r.id!r}: {exc.strerror or exc}",
                )
            )
            continue
        known = old.content
        if known is None and old.path is not None:  # stored before content hashes were kept
            known = digest if old.path == str(Path(r.path).resolve()) else content_or_none(old.path)
            if known is not None:
                backfill[r.id] = known
        if known == digest:
            out.records.append(r)
            continue
        new_id, present = free_id(store, r.id, digest, taken)
        record = ImageRecord(new_id, r.path, r.landmark_id)
        out.records.append(record)
        if present:  # added before under its new id
            continue
        taken.add(new_id)
        out.todo.append(record)
        out.contents[new_id] = digest
        out.renamed.append(
            Renamed(
                r.id,
                new_id,
                str(r.path),
                f"another photo ({old.path})"
                if known is not None
                else f"a photo stored before content hashes were kept, whose file {old.path} is gone "
                "(so the two cannot be compared)",
            )
        )
    store.set_contents(backfill)
    return out


def free_id(store: Store, image_id: str, digest: str, taken: set[str]) -> tuple[str, bool]:
    """The id of a photo of content ``digest`` whose own ``image_id`` is taken, and whether a photo of that
    content is already stored under it: ``{image_id}~{digest prefix}``, the prefix longer while the
    id names another photo or one of ``taken`` (ids of the same batch)."""
    for n in (8, 16, len(digest)):
        candidate = f"{image_id}~{digest[:n]}"
        if candidate in taken:
            continue
        found = store.stored_files([candidate]).get(candidate)
        if found is None:
            return candidate, False
        if found.content == digest:
            return candidate, True
    raise StoreError(
        f"no free id for a photo of id {image_id!r} (SHA-256 {digest}): {image_id}~{digest} names another stored photo"
    )


def same_file(stored: StoredFile, path: str | Path) -> bool:
    """Whether ``path`` is the file ``stored`` was read from, not modified since it was added."""
    if stored.path is None:
        return False
    try:
        resolved = Path(path).resolve()
        return str(resolved) == stored.path and resolved.stat().st_mtime <= stored.added_at
    except OSError:
        return False


def content_or_none(path: str | Path) -> str | None:
    """:func:`content_hash` of ``path``, None when it cannot be read (then it is compared as unknown)."""
    try:
        return content_hash(path)
    except OSError:
        return None
