"""TensorFlow Addons' metric-learning losses, as `tfa.losses` exposed them.

`tfmetric.addons.losses.metric_learning` holds `pairwise_distance` and
`angular_distance`, as `tfa.losses.metric_learning` did.
"""

from tfmetric.addons.losses import metric_learning
from tfmetric.addons.losses.contrastive import ContrastiveLoss, contrastive_loss
from tfmetric.addons.losses.lifted import LiftedStructLoss, lifted_struct_loss
from tfmetric.addons.losses.npairs import (
    NpairsLoss,
    NpairsMultilabelLoss,
    npairs_loss,
    npairs_multilabel_loss,
)
from tfmetric.addons.losses.triplet import (
    TripletHardLoss,
    TripletSemiHardLoss,
    triplet_hard_loss,
    triplet_semihard_loss,
)

__all__ = [
    "ContrastiveLoss",
    "LiftedStructLoss",
    "NpairsLoss",
    "NpairsMultilabelLoss",
    "TripletHardLoss",
    "TripletSemiHardLoss",
    "contrastive_loss",
    "lifted_struct_loss",
    "metric_learning",
    "npairs_loss",
    "npairs_multilabel_loss",
    "triplet_hard_loss",
    "triplet_semihard_loss",
]
