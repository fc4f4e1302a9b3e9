"""Retrieval: nearest-neighbour search in the store (later: alpha-QE, DBA, spatial re-ranking)."""

from .search import Ranking, rank

__all__ = ["Ranking", "rank"]
