"""Features: batched global-descriptor extraction (and, later, whitening and local features).

Names are imported from their submodule on first use (landmark.utils.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .extract import ExtractionResult, Failure, GlobalExtractor, bucket_batches
    from .whitening import Whitening, WhiteningError, learn_whitening

_EXPORTS = {
    "ExtractionResult": "extract",
    "Failure": "extract",
    "GlobalExtractor": "extract",
    "Whitening": "whitening",
    "WhiteningError": "whitening",
    "bucket_batches": "extract",
    "learn_whitening": "whitening",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
