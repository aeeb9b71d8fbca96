"""Trainable layers: proxy-based loss heads and learned distances.

Loss heads (`ArcFace`, `CosFace`, `SubCenterArcFace`, `NormalizedSoftmax`,
`ProxyAnchor`, `ProxyNCA`) hold trainable class proxies; called on
`(embeddings, labels)` they return per-sample loss values. Train them with
`tfmetric.models.ProxyModel(embedder, head)`.

Learned distances (`Mahalanobis`, `WeightedL1`) are Siamese heads called on
two embedding batches and, through `tfmetric.distances.get(layer)`, distances.
`PairedDistance` is the distance node of `tfmetric.models.SiameseModel`.

`CrossBatchMemory` is the ring buffer of past embeddings of
`tfmetric.models.CrossBatchMemoryModel`. `InBatchLogits` scores a batch of queries against its candidates (two-tower models).
"""

from tfmetric.layers.cross_batch_memory import CrossBatchMemory
from tfmetric.layers.in_batch_logits import InBatchLogits
from tfmetric.layers.learned_distances import LearnedDistance, Mahalanobis, WeightedL1
from tfmetric.layers.margin_heads import ArcFace, CosFace, NormalizedSoftmax, SubCenterArcFace
from tfmetric.layers.paired_distance import PairedDistance
from tfmetric.layers.proxy_anchor import ProxyAnchor
from tfmetric.layers.proxy_head import ProxyHead
from tfmetric.layers.proxy_nca import ProxyNCA

__all__ = [
    "CrossBatchMemory",
    "InBatchLogits",
    "ArcFace",
    "CosFace",
    "LearnedDistance",
    "Mahalanobis",
    "NormalizedSoftmax",
    "PairedDistance",
    "ProxyAnchor",
    "ProxyHead",
    "ProxyNCA",
    "SubCenterArcFace",
    "WeightedL1",
]
