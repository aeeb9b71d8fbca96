"""Keras callbacks for metric learning."""

from tfmetric.callbacks.mining_schedule import MiningSchedule
from tfmetric.callbacks.retrieval_evaluation import RetrievalEvaluation

__all__ = [
    "MiningSchedule",
    "RetrievalEvaluation",
]
