"""Keras models built around a shared embedding tower."""

from tfmetric.models.cross_batch_memory import CrossBatchMemoryModel
from tfmetric.models.momentum_contrast import MomentumContrastModel
from tfmetric.models.proxy_model import ProxyModel
from tfmetric.models.siamese import SiameseModel
from tfmetric.models.triplet_model import TripletModel
from tfmetric.models.two_tower import TwoTowerModel

__all__ = [
    "MomentumContrastModel",
    "CrossBatchMemoryModel",
    "ProxyModel",
    "SiameseModel",
    "TripletModel",
    "TwoTowerModel",
]
