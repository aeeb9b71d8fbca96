"""Trainable layers: loss heads (proxy-based) and learned distances (pair scorers).

A **head** means one contract in tfmetric: a layer called as
`head(embeddings, labels)` on embeddings `(B, D)` and integer labels `(B,)`
that returns float32 per-sample loss values `(B,)`; the loss is their mean.
The heads (`ArcFace`, `CosFace`, `SubCenterArcFace`, `NormalizedSoftmax`,
`ProxyAnchor`, `ProxyNCA`, all `ProxyHead`s) hold trainable class proxies.
Train them with `tfmetric.models.ProxyModel(embedder, head)`, which rejects a
head whose output is not `(B,)`.

A **pair scorer** is the other contract: `scorer(e1, e2)` on two embedding
batches of the same shape `(B, D)` returns one score per pair `(B,)`. Learned
distances (`Mahalanobis`, `WeightedL1`) are pair scorers (the `scorer` of
`tfmetric.models.SiameseModel`) and, through `tfmetric.distances.get(layer)`,
distances. `PairedDistance` is the distance node of `SiameseModel`.

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
