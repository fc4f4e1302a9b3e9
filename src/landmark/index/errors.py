"""The errors of the store."""

from __future__ import annotations

from ..errors import LandmarkError


class StoreError(LandmarkError, RuntimeError):
    """The store is missing, damaged, or asked for something it cannot do."""


class SignatureMismatch(StoreError):
    """Query vectors come from another model or preprocessing than the store's."""
