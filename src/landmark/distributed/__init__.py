"""Scale-out: extraction on a Ray cluster (multi-GPU training is torch DDP, in ``landmark.training``).

Names are imported from their submodule on first use (landmark.utils.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .extract import RayConfig, RayUnavailable, extract_distributed

_EXPORTS = {
    "RayConfig": "extract",
    "RayUnavailable": "extract",
    "extract_distributed": "extract",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
