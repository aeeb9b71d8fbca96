"""Nearest-neighbour indexes: exact search, and an optional approximate backend."""

from tfmetric.index.approximate import ApproximateIndex
from tfmetric.index.base import Index
from tfmetric.index.exact import ExactIndex

__all__ = ["ApproximateIndex", "ExactIndex", "Index"]
