"""Features: batched global-descriptor extraction (and, later, whitening and local features)."""

from .extract import ExtractionResult, Failure, GlobalExtractor, bucket_batches
from .whitening import Whitening, WhiteningError, learn_whitening

__all__ = ["ExtractionResult", "Failure", "GlobalExtractor", "Whitening", "WhiteningError", "bucket_batches",
           "learn_whitening"]
