"""Keras callbacks for metric learning."""

from tfmetric.callbacks.mining_schedule import MiningSchedule

__all__ = [
    "MiningSchedule",
]
