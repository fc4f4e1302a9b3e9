"""Retrieval: nearest-neighbour search in the store, DBA and alpha-QE, spatial re-ranking."""

from .expansion import dba, query_expansion
from .search import ExpandedSearch, Ranking, rank

__all__ = ["ExpandedSearch", "Ranking", "dba", "query_expansion", "rank"]
