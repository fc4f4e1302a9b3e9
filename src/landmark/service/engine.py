"""What the HTTP layer calls: reads from a pinned snapshot, writes through one writer thread.

Reads (recognize, search, browse, thumbnails) use a :class:`Snapshot`: a read-only ``Landmarks`` over
a pinned :class:`~landmark.index.Store` (one committed generation of SQLite and FAISS). Writes run
one at a time on a single writer thread through the store's atomic generation commits; after each
commit the writer opens a new snapshot and swaps it in. A read that started earlier finishes on
the snapshot it took, so reads never wait for a write and never see a half-written store.

Decoding and embedding run on a small bounded thread pool (torch on a few cores), never in the
event loop; cheap reads (thumbnails, metadata, evidence drawing) run on a separate pool so they do
not queue behind inference.
"""

from __future__ import annotations

import io
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..api import Landmarks, SearchOutput
from ..data import ImageRecord
from ..data.images import ImageError, load_image
from ..features import ExtractionResult
from ..index import Store, StoreError
from ..index.records import ImageRow
from ..utils.io import atomic_write_bytes
from .errors import ServiceError
from .responses import match_json, quote_id, recognition_json, row_json, shrunk
from .settings import ServiceSettings
from .uploads import EXTENSIONS, NEW_ID, DecodedUpload, LRUBytes, TokenCache, check_id, decode_upload

log = logging.getLogger(__name__)

_PENDING = "pending"  # the id of a prepared upload until commit_add names it


class Snapshot:
    """A read-only view of one committed generation: a ``Landmarks`` over a pinned store."""

    def __init__(self, root: Path, writer: Landmarks):
        self.lm = type(writer)(Store.open(root).pin(), writer.extractor)  # same class: same hooks (evidence)
        self.store = self.lm.store
        self.generation = self.store.generation
        self.names = self.store.label_names()
        self.state: tuple[int, str] | None = None  # (generation, configuration) it was made at, set by Service

    def warm(self) -> Snapshot:
        """Make now what the first read of this generation would otherwise wait for: the known
        non-landmark set of recognition and, when search expands, the DBA database."""
        try:
            self.lm.recognising.recognizer.known_non_landmarks()
            if self.lm.searching.expands_by_default:
                self.lm.searching.expanded_search()
        except Exception as exc:  # noqa: BLE001 - the first read retries and reports it
            log.warning("preparing generation %d for reads failed: %s", self.generation, exc)
        return self


class Service:
    """The state behind the app: one writer ``Landmarks``, the current snapshot, the thread pools."""

    def __init__(self, lm: Landmarks, settings: ServiceSettings | None = None):
        self.settings = settings or ServiceSettings()
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        self.writer = lm
        self.root = Path(lm.store.root)
        self.uploads_root = self.root / self.settings.uploads_dir
        # commits by other processes (e.g. `landmark index add` or `landmark calibrate` beside the server)
        # are picked up by reads
        self._probe = sqlite3.connect(str(self.root / "meta.sqlite"), isolation_level=None, check_same_thread=False)
        self._probe_lock = threading.Lock()
        self._snapshot = self._new_snapshot()
        self._swap = threading.Lock()
        self.infer_pool = ThreadPoolExecutor(self.settings.inference_workers, thread_name_prefix="landmark-infer")
        self.io_pool = ThreadPoolExecutor(self.settings.io_workers, thread_name_prefix="landmark-io")
        self.write_pool = ThreadPoolExecutor(1, thread_name_prefix="landmark-write")
        self.tokens = TokenCache(self.settings.upload_tokens, self.settings.upload_token_ttl_s)
        self.thumbs = LRUBytes(self.settings.thumbnail_cache)
        self._checked = time.monotonic()
        self._reload_pending = False

    @classmethod
    def open(cls, store_dir: str | Path, settings: ServiceSettings | None = None, device: str | None = None) -> Service:
        return cls(Landmarks.open(store_dir, device=device), settings)

    def close(self) -> None:
        for pool in (self.write_pool, self.infer_pool, self.io_pool):
            pool.shutdown(wait=True)
        self._probe.close()

    @property
    def snapshot(self) -> Snapshot:
        self._look_for_other_writers()
        return self._snapshot

    def committed_state(self) -> tuple[int, str]:
        """The committed generation and pipeline configuration (thresholds a calibration refits)."""
        with self._probe_lock:
            rows = dict(self._probe.execute("SELECT key, value FROM meta WHERE key IN ('generation', 'config')"))
        return int(rows["generation"]), rows.get("config", "")

    def _new_snapshot(self) -> Snapshot:
        state = self.committed_state()  # read first: a commit in between only costs one more reload
        snap = Snapshot(self.root, self.writer).warm()
        snap.state = state
        return snap

    def _look_for_other_writers(self) -> None:
        """At most every ``reload_check_s``: if another process committed photos or a configuration
        (e.g. `landmark calibrate`), reload on the writer thread."""
        every = self.settings.reload_check_s
        now = time.monotonic()
        if every <= 0 or now - self._checked < every or self._reload_pending:
            return
        self._checked = now
        try:
            moved = self.committed_state() != self._snapshot.state
        except sqlite3.Error as exc:
            log.warning("cannot read the store's generation and configuration: %s", exc)
            return
        if moved:
            self._reload_pending = True
            self.write_pool.submit(self._reload)

    def _reload(self) -> None:
        try:
            if self.committed_state() != self._snapshot.state:
                self._refresh()
                self.thumbs = LRUBytes(self.settings.thumbnail_cache)  # photos may have been replaced
        except (StoreError, sqlite3.Error) as exc:  # e.g. a file replaced under us: the next check retries
            log.warning("reloading the store after another writer's commit failed: %s", exc)
        finally:
            self._reload_pending = False

    # -- reads -----------------------------------------------------------------------------------
    def recognize(self, data: bytes, filename: str | None = None) -> dict[str, Any]:
        """Decode, embed, vote; keep the upload under a token for evidence drawing."""
        up = decode_upload(data, self.settings, filename)
        snap = self.snapshot
        rec = snap.lm.recognize([up.image])[0]
        if rec.error:
            raise ServiceError(422, f"{filename or 'upload'}: {rec.error}")
        token = self.tokens.put(shrunk(up.image, self.settings.evidence_side))
        out = recognition_json(rec)
        out.update(
            query=filename or "upload",
            width=up.size[0],
            height=up.size[1],
            token=token,
            generation=snap.generation,
            evidence_available=self.evidence_supported,
        )
        best = out["matches"][0]["id"] if out["matches"] else None
        out["evidence_url"] = f"/uploads/{token}/matches/{quote_id(best)}" if best and self.evidence_supported else None
        return out

    def search(self, data: bytes, k: int, filename: str | None = None, *, expand: bool | None = None) -> dict[str, Any]:
        up = decode_upload(data, self.settings, filename)
        snap = self.snapshot
        expand = snap.lm.searching.expands_by_default if expand is None else expand
        res: SearchOutput = snap.lm.search([up.image], k=k, expand=expand)[0]
        if res.error:
            raise ServiceError(422, f"{filename or 'upload'}: {res.error}")
        return {
            "query": filename or "upload",
            "k": k,
            "generation": snap.generation,
            "expanded": expand,
            "matches": [match_json(m) for m in res.matches],
        }

    def image_row(self, image_id: str, snap: Snapshot | None = None) -> ImageRow:
        check_id(image_id)
        snap = snap or self.snapshot
        row = snap.store.get([image_id]).get(image_id)
        if row is None:
            raise ServiceError(404, f"no image with id {image_id!r} in the store")
        return row

    def image_json(self, image_id: str) -> dict[str, Any]:
        snap = self.snapshot
        row = self.image_row(image_id, snap)
        return row_json(row, snap.names)

    def thumbnail(self, image_id: str) -> bytes:
        snap = self.snapshot
        row = self.image_row(image_id, snap)
        key = image_id
        cached = self.thumbs.get(key)
        if cached is not None:
            return cached
        if not row.path:
            raise ServiceError(404, f"image {image_id!r} has no stored photo file")
        try:
            img = load_image(
                row.path, max_pixels=max(self.settings.max_pixels, 100_000_000), draft_size=self.settings.thumbnail_size
            )
        except ImageError as exc:
            raise ServiceError(404, f"the photo of {image_id!r} cannot be read: {exc.reason}") from None
        img.thumbnail((self.settings.thumbnail_size, self.settings.thumbnail_size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        self.thumbs.put(key, data)
        return data

    def photo_path(self, image_id: str) -> Path:
        row = self.image_row(image_id)
        if not row.path or not Path(row.path).is_file():
            raise ServiceError(404, f"the photo file of {image_id!r} is not available")
        return Path(row.path)

    def landmarks(self) -> list[dict[str, Any]]:
        snap = self.snapshot
        return [
            {
                "landmark_id": lab,
                "name": snap.names.get(lab) if lab is not None else None,
                "images": n,
                "cover": key,
                "cover_thumbnail": f"/images/{quote_id(key)}/thumbnail",
            }
            for lab, n, key in snap.store.landmark_counts()
        ]

    def list_images(self, landmark_id: int | None, unlabelled: bool, offset: int, limit: int) -> dict[str, Any]:
        snap = self.snapshot
        rows = snap.store.list_images(landmark_id, unlabelled=unlabelled, offset=offset, limit=limit)
        return {
            "landmark_id": landmark_id,
            "offset": offset,
            "limit": limit,
            "generation": snap.generation,
            "images": [row_json(r, snap.names) for r in rows],
        }

    @property
    def evidence_supported(self) -> bool:
        return callable(getattr(self.snapshot.lm, "match_evidence", None))

    def evidence(self, a: str | Image.Image, b: str) -> bytes:
        """PNG of verified keypoint matches between ``a`` (an id or an uploaded photo) and stored ``b``."""
        snap = self.snapshot
        if isinstance(a, str):
            self.image_row(a, snap)
        self.image_row(b, snap)
        fn: Callable[..., bytes | None] | None = getattr(snap.lm, "match_evidence", None)
        if not callable(fn):
            raise ServiceError(
                404,
                "local features are not available: this build of landmark has no match_evidence (keypoint matching)",
            )
        try:
            png = fn(a, b)
        except KeyError as exc:
            raise ServiceError(404, f"no local features for this pair: {exc}") from None
        except ImageError as exc:
            # the uploaded photo was read already: a stored photo's file is missing or unreadable on the server
            raise ServiceError(404, f"cannot draw the evidence: a stored photo cannot be read: {exc}") from None
        if png is None:
            raise ServiceError(
                404,
                "local features are not available for this store (build it with local features "
                "to see matched keypoints)",
            )
        return png

    def upload_image(self, token: str) -> Image.Image:
        img = self.tokens.get(token)
        if img is None:
            raise ServiceError(404, f"unknown or expired upload token {token!r}; recognize the photo again")
        return img

    def health(self) -> dict[str, Any]:
        snap = self.snapshot
        return {
            "status": "ok",
            "images": len(snap.store),
            "generation": snap.generation,
            "landmarks": len(snap.names),
            "dim": snap.store.dim,
            "model": snap.store.signature.get("backbone") or snap.store.config.model.backbone,
            "evidence": self.evidence_supported,
        }

    # -- writes (writer thread only) -------------------------------------------------------------
    def prepare_add(self, data: bytes, filename: str | None) -> tuple[DecodedUpload, ExtractionResult]:
        """Decode and embed a photo to add, with the object prior the store keeps for every photo
        (inference pool); nothing is written yet."""
        up = decode_upload(data, self.settings, filename)
        vectors, extras = self.writer.extractor.extract_images_with_probe([up.image])
        return up, ExtractionResult([_PENDING], vectors, sizes={_PENDING: up.size}, extras=extras)

    def commit_add(
        self,
        data: bytes,
        up: DecodedUpload,
        extracted: ExtractionResult,
        *,
        image_id: str | None,
        landmark_id: int | None,
        name: str | None,
    ) -> dict[str, Any]:
        """Save the photo, add it in one store commit with its object prior, extract its local
        features (when the store keeps them), then swap in the new snapshot (writer thread)."""
        store = self.writer.store
        if image_id is None:
            image_id = f"u-{uuid.uuid4().hex[:16]}"
        elif not NEW_ID.match(image_id) or ".." in image_id:
            raise ServiceError(
                400,
                f"invalid id {image_id!r} for a new photo: use 1-128 letters, digits, "
                f"'.', '_' or '-', starting with a letter or digit",
            )
        if store.get([image_id]):
            raise ServiceError(409, f"an image with id {image_id!r} is already in the store")
        path = self.uploads_root / f"{image_id}{EXTENSIONS.get(up.format or '', '.img')}"
        atomic_write_bytes(path, data)
        record = ImageRecord(image_id, path, landmark_id)
        try:
            if landmark_id is not None and name:
                store.set_label_names({landmark_id: name})
            self.writer.building.store_extracted(
                [record], replace(extracted, ids=[image_id], sizes={image_id: up.size}), "user"
            )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if (
            self.writer.config.local.enabled
        ):  # for spatial re-ranking and /matches (a failure is logged, the photo stays)
            try:
                for failure in self.writer.building.add_local([record], replace=False):
                    log.warning("no local features for %s: %s", image_id, failure.reason)
            except Exception as exc:  # the photo is committed: never a 500 for it, never a lost snapshot
                log.warning("no local features for %s: %s", image_id, exc)
        self._refresh()
        self.thumbs.drop(image_id)
        return row_json(self.image_row(image_id), self.snapshot.names)

    def commit_remove(self, image_id: str) -> dict[str, Any]:
        check_id(image_id)
        store = self.writer.store
        row = store.get([image_id]).get(image_id)
        if row is None:
            raise ServiceError(404, f"no image with id {image_id!r} in the store")
        self.writer.remove([image_id])  # its vector, metadata and local features
        self._refresh()
        self.thumbs.drop(image_id)
        if row.path and row.split == "user":
            p = Path(row.path)
            if p.parent.resolve() == self.uploads_root.resolve():
                p.unlink(missing_ok=True)
        return {"removed": image_id, "images": len(self.snapshot.store), "generation": self.snapshot.generation}

    def _refresh(self) -> None:
        new = self._new_snapshot()  # on the writer thread: reads keep the old one meanwhile
        with self._swap:
            self._snapshot = new
