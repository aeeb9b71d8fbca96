"""Metric-learning losses on batches of (integer labels, embeddings).

Each loss is a public function (the computation) and a thin
`keras.losses.Loss` subclass that stores its arguments.
"""

from tfmetric.losses.anchor_triplet import (
    AnchorTripletLoss,
    PNLoss,
    anchor_triplet_loss,
    pn_loss,
)
from tfmetric.losses.circle import CircleLoss, circle_loss
from tfmetric.losses.contrastive import ContrastiveLoss, contrastive_loss
from tfmetric.losses.in_batch_softmax import InBatchSoftmaxLoss, clip_loss, in_batch_softmax_loss
from tfmetric.losses.lifted_structure import LiftedStructureLoss, lifted_structure_loss
from tfmetric.losses.momentum_contrast import momentum_contrast_loss
from tfmetric.losses.multi_similarity import MultiSimilarityLoss, multi_similarity_loss
from tfmetric.losses.npairs import NPairsLoss, npairs_loss
from tfmetric.losses.pair_contrastive import (
    PairContrastiveLoss,
    pair_contrastive_loss,
    paired_distance,
)
from tfmetric.losses.soft_nearest_neighbor import (
    SoftNearestNeighborLoss,
    soft_nearest_neighbor_loss,
)
from tfmetric.losses.supervised_contrastive import (
    NTXentLoss,
    SupervisedContrastiveLoss,
    nt_xent_loss,
    supervised_contrastive_loss,
)
from tfmetric.losses.triplet import TripletLoss, triplet_loss
from tfmetric.losses.triplet_margin import TripletMarginLoss, triplet_margin_loss

__all__ = [
    "momentum_contrast_loss",
    "InBatchSoftmaxLoss",
    "clip_loss",
    "in_batch_softmax_loss",
    "AnchorTripletLoss",
    "PNLoss",
    "anchor_triplet_loss",
    "pn_loss",
    "CircleLoss",
    "LiftedStructureLoss",
    "MultiSimilarityLoss",
    "NPairsLoss",
    "NTXentLoss",
    "SoftNearestNeighborLoss",
    "SupervisedContrastiveLoss",
    "circle_loss",
    "lifted_structure_loss",
    "multi_similarity_loss",
    "npairs_loss",
    "nt_xent_loss",
    "soft_nearest_neighbor_loss",
    "supervised_contrastive_loss",
    "ContrastiveLoss",
    "TripletLoss",
    "contrastive_loss",
    "triplet_loss",
    "PairContrastiveLoss",
    "TripletMarginLoss",
    "pair_contrastive_loss",
    "paired_distance",
    "triplet_margin_loss",
]
