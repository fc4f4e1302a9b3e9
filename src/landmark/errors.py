"""The base of every error ``landmark`` raises on purpose.

A :class:`LandmarkError` says what was wrong with the input, the store, the configuration or the
environment, and what to do; the CLI prints its message and exits with status 2 (no traceback).
Each stage's errors derive from it and, where they did before, from the built-in they extend
(``ValueError``, ``RuntimeError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class LandmarkError(Exception):
    """An expected failure with a message for the user (bad input, missing store, missing package...)."""
