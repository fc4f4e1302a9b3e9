"""Photos sent to the service: ids a client may choose, decoding an upload within the settings' limits,
and the small in-memory caches of uploads (by token) and of thumbnails."""

from __future__ import annotations

import io
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image

from ..data.images import ImageError, load_image
from .errors import ServiceError
from .settings import ServiceSettings

log = logging.getLogger(__name__)

# ids the service creates become file names: keep them plain
NEW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


EXTENSIONS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "MPO": ".jpg",
}


def check_id(image_id: str) -> str:
    """Refuse path-like or control-character ids before any lookup (stored ids may hold ``/``)."""
    if not image_id or len(image_id) > 512:
        raise ServiceError(400, "invalid image id: empty or longer than 512 characters")
    parts = image_id.split("/")
    if (
        image_id.startswith("/")
        or "\\" in image_id
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 or ord(c) == 127 for c in image_id)
    ):
        raise ServiceError(
            400,
            f"invalid image id {image_id!r}: ids are not paths (no '..', '.', empty "
            f"segments, leading '/', backslashes or control characters)",
        )
    return image_id


@dataclass
class DecodedUpload:
    image: Image.Image
    size: tuple[int, int]
    format: str | None


def decode_upload(data: bytes, settings: ServiceSettings, filename: str | None = None) -> DecodedUpload:
    """Decode an uploaded photo with the project's safe decoder; errors become 4xx ``ServiceError``."""
    name = filename or "upload"
    if not data:
        raise ServiceError(400, f"{name}: empty upload (0 bytes); attach a photo (JPEG, PNG, WebP, ...)")
    if len(data) > settings.max_upload_bytes:
        raise ServiceError(
            413, f"{name}: {len(data):,} bytes is over the upload limit of {settings.max_upload_bytes:,} bytes"
        )
    try:
        fmt = Image.open(io.BytesIO(data)).format
    except Exception:
        fmt = None
    try:
        img = load_image(data, max_pixels=settings.max_pixels)
    except ImageError as exc:
        reason = exc.reason
        if "over the limit" in reason or "decompression bomb" in reason:
            raise ServiceError(413, f"{name}: {reason}") from None
        if "not a recognised image format" in reason:
            raise ServiceError(415, f"{name}: not an image ({reason}); upload a JPEG, PNG, WebP, ... photo") from None
        raise ServiceError(422, f"{name}: {reason}") from None
    return DecodedUpload(img, img.size, fmt)


class TokenCache:
    """Recent uploads by random token, bounded in count and age (for drawing evidence later)."""

    def __init__(self, capacity: int, ttl_s: float):
        self.capacity, self.ttl_s = capacity, ttl_s
        self._items: OrderedDict[str, tuple[float, Image.Image]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, image: Image.Image) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._items[token] = (time.monotonic(), image)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return token

    def get(self, token: str) -> Image.Image | None:
        with self._lock:
            item = self._items.get(token)
            if item is None:
                return None
            if time.monotonic() - item[0] > self.ttl_s:
                del self._items[token]
                return None
            return item[1]

    def __len__(self) -> int:
        return len(self._items)


class LRUBytes:
    """A thread-safe LRU of small byte strings (thumbnails)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)
