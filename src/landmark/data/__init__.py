"""Reading photos and datasets: safe image decoding and dataset manifests (GLDv2 layout or folders).

Names are imported from their submodule on first use (landmark.utils.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .images import DEFAULT_MAX_PIXELS, ImageError, load_image, probe_size, to_rgb
    from .manifests import (
        GLDV2_SPLITS,
        IMAGE_EXTENSIONS,
        DatasetError,
        ImageRecord,
        Manifest,
        Solution,
        dataset_entry,
        gldv2_image_path,
        has_gldv2_split,
        is_gldv2,
        read_dataset,
        read_folder,
        read_gldv2,
        read_gldv2_solution,
        read_photos,
    )

_EXPORTS = {
    "DEFAULT_MAX_PIXELS": "images",
    "GLDV2_SPLITS": "manifests",
    "IMAGE_EXTENSIONS": "manifests",
    "DatasetError": "manifests",
    "ImageError": "images",
    "ImageRecord": "manifests",
    "Manifest": "manifests",
    "Solution": "manifests",
    "dataset_entry": "manifests",
    "gldv2_image_path": "manifests",
    "has_gldv2_split": "manifests",
    "is_gldv2": "manifests",
    "load_image": "images",
    "probe_size": "images",
    "read_dataset": "manifests",
    "read_folder": "manifests",
    "read_gldv2": "manifests",
    "read_gldv2_solution": "manifests",
    "read_photos": "manifests",
    "to_rgb": "images",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
