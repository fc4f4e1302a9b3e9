"""Reading photos and datasets: safe image decoding and dataset manifests (GLDv2 layout or folders)."""

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

__all__ = [
    "DEFAULT_MAX_PIXELS", "GLDV2_SPLITS", "IMAGE_EXTENSIONS", "DatasetError", "ImageError", "ImageRecord",
    "Manifest", "Solution", "dataset_entry", "gldv2_image_path", "has_gldv2_split", "is_gldv2", "load_image", "probe_size", "read_dataset",
    "read_folder", "read_gldv2", "read_gldv2_solution", "read_photos", "to_rgb",
]
