"""Retrieval: nearest-neighbour search in the store (later: alpha-QE, DBA, spatial re-ranking)."""

from .expansion import dba, query_expansion
from .search import Ranking, rank

__all__ = ["Ranking", "dba", "query_expansion", "rank"]
