"""Settings of the HTTP service: a typed dataclass merged with ``key=value`` overrides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..utils.config import ConfigError, merge, parse_overrides


@dataclass
class ServiceSettings:
    """Limits, sizes and logging of ``landmark serve``; every upload is checked against the first two."""

    max_upload_bytes: int = 20 * 1024 * 1024  # one uploaded photo (the request body may add 64 KiB of form)
    max_pixels: int = 40_000_000  # width * height of an uploaded photo
    thumbnail_size: int = 256  # long side of thumbnails, pixels
    default_k: int = 12  # results of POST /search when k is not given
    max_k: int = 100
    inference_workers: int = 1  # photos decoded and embedded at once (threads)
    io_workers: int = 4  # threads for thumbnails, store reads and evidence drawing
    torch_threads: int | None = None  # torch intra-op threads; None = torch's default
    upload_tokens: int = 32  # recent uploads kept for drawing evidence against them
    upload_token_ttl_s: float = 900.0
    evidence_side: int = 1024  # long side of a kept upload, pixels
    thumbnail_cache: int = 2048  # thumbnails kept in memory (JPEG bytes)
    uploads_dir: str = "uploads"  # under the store: photos added through POST /images
    reload_check_s: float = 2.0  # how often reads look for commits by other writers (CLI); 0 = never
    access_log: bool = True  # `landmark serve` logs each request: uvicorn's access log, on stdout

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_pixels",
            "thumbnail_size",
            "default_k",
            "max_k",
            "inference_workers",
            "io_workers",
            "evidence_side",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"service setting {name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.default_k <= self.max_k:
            raise ConfigError(f"service setting default_k must be in [1, max_k={self.max_k}], got {self.default_k}")


def load_settings(
    overrides: Sequence[str] | Mapping[str, Any] = (), base: ServiceSettings | None = None
) -> ServiceSettings:
    """``load_settings(["max_upload_bytes=1000000"])`` -> :class:`ServiceSettings` (keys checked, values typed)."""
    data = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    return merge(base or ServiceSettings(), data)
