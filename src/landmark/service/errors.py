"""The error the service answers with: an HTTP status and a message."""

from __future__ import annotations

from ..errors import LandmarkError


class ServiceError(LandmarkError):
    """A request the service refuses: ``status`` is the HTTP status, the message says what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
