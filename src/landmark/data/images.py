"""Safe image decoding: any photo on disk (or in memory) to a fully decoded 8-bit RGB image.

Every failure - a missing file, a file that is not an image, truncated data, a decompression
bomb - raises :class:`ImageError` with the source and a human reason, so a batch job can log
the photo and move on. PIL's ``LOAD_TRUNCATED_IMAGES`` is left alone: truncated data is an error.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from ..errors import LandmarkError

DEFAULT_MAX_PIXELS = 100_000_000  # decompression-bomb limit (width * height of the stored image)

Source = str | os.PathLike[str] | bytes

_TRANSPOSE = {  # EXIF orientation -> the transposition that shows the photo upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}
_ALPHA_MODES = {"RGBA", "LA", "PA"}
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_BACKGROUND = (255, 255, 255)


class ImageError(LandmarkError, ValueError):
    """A photo that cannot be decoded; ``source`` names it and ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def load_image(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode ``source`` (a path or the encoded bytes) to an upright 8-bit RGB image.

    ``draft_size`` lets a large JPEG decode at a reduced DCT scale that keeps both sides at least
    ``draft_size`` pixels; the caller resizes to its exact target afterwards.
    """
    with _opened(source, max_pixels) as (name, img):
        try:
            if draft_size and isinstance(img, JpegImagePlugin.JpegImageFile):  # MPO photos too
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            method = _TRANSPOSE.get(_orientation(img))
            if method is not None:
                img = img.transpose(method)
            return to_rgb(img)
        except Image.DecompressionBombError as exc:
            raise ImageError(name, f"decompression bomb: {exc}") from None
        except Exception as exc:  # decoders of untrusted data raise all sorts of errors
            raise ImageError(name, f"truncated or corrupt image data: {exc}") from None


def probe_size(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of the upright photo, read from the header without decoding pixels."""
    with _opened(source, max_pixels) as (_, img):
        width, height = img.size
        return (height, width) if _orientation(img) in _SWAPS_AXES else (width, height)


def to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any PIL mode to 8-bit RGB; transparent pixels are composited onto white."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _WIDE_MODES:
        img = _to_8bit(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images to ``L``: 16-bit by /257, others by their value range."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = (arr.astype(np.uint32) + 128) // 257
    else:
        data = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(data.min()), float(data.max())
        if hi > lo:
            out = np.rint((data - lo) * (255.0 / (hi - lo)))
        else:  # a constant image: keep its value where it is a valid 8-bit level
            out = np.clip(data, 0, 255)
    return Image.fromarray(out.astype(np.uint8), "L")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) known so far, 1 when absent or unreadable; never decodes pixels."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # PIL's PNG getexif() would decode the whole image to look for a late eXIf chunk
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block only loses the orientation, not the photo
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


@contextmanager
def _opened(source: Source, max_pixels: int) -> Iterator[tuple[str, Image.Image]]:
    """Open ``source`` lazily (header only) after the file and decompression-bomb checks."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    with _stream(source, name) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about odd but readable files; never crash on one
        try:
            img = Image.open(fh)
        except UnidentifiedImageError:
            raise ImageError(name, "not a recognised image format") from None
        except Image.DecompressionBombError:  # Pillow refuses more than twice its MAX_IMAGE_PIXELS before we can
            limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0)) or max_pixels
            raise ImageError(
                name, f"image is over the limit of {limit:,} pixels (possible decompression bomb)"
            ) from None
        except Exception as exc:
            raise ImageError(name, f"truncated or corrupt image data: {exc}") from None
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(
                name,
                f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,} pixels (possible decompression bomb)",
            )
        yield name, img


@contextmanager
def _stream(source: Source, name: str) -> Iterator[BinaryIO]:
    """A binary stream over ``source``; the caller's file handle stays ours to close."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError(name, "empty data (0 bytes)")
        yield io.BytesIO(source)
        return
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise ImageError(name, "file not found") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ImageError(name, f"cannot read file: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(name, "is a directory, not an image file")
    if st.st_size == 0:
        raise ImageError(name, "empty file (0 bytes)")
    try:
        fh = open(source, "rb")
    except OSError as exc:
        raise ImageError(name, f"cannot read file: {exc.strerror or exc}") from None
    with fh:
        yield fh
