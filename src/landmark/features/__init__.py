"""Features: batched global-descriptor extraction (and, later, whitening and local features)."""

from .extract import ExtractionResult, Failure, GlobalExtractor, bucket_batches

__all__ = ["ExtractionResult", "Failure", "GlobalExtractor", "bucket_batches"]
