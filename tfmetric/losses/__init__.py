"""Metric-learning losses on batches of (integer labels, embeddings).

Each loss is a public function (the computation) and a thin
`keras.losses.Loss` subclass that stores its arguments.
"""

from tfmetric.losses.contrastive import ContrastiveLoss, contrastive_loss
from tfmetric.losses.triplet import TripletLoss, triplet_loss

__all__ = [
    "ContrastiveLoss",
    "TripletLoss",
    "contrastive_loss",
    "triplet_loss",
]
