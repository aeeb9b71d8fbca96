"""Closed-set identification: the cumulative match characteristic (CMC)."""

import numpy as np

from tfmetric._src import validation
from tfmetric.metrics import _ranking, _topk


def cmc_curve(
    query, query_labels, gallery=None, gallery_labels=None, distance="euclidean", max_rank=10
):
    """Cumulative match characteristic: rank-k identification accuracy.

    `cmc[k - 1]` is the fraction of queries whose first same-label reference
    is among their `k` nearest, for `k = 1 .. max_rank`; `cmc[0]` is the rank-1
    accuracy. Ranking, ties (pessimistic), leave-one-out mode and queries whose
    label is absent from the gallery (excluded, with a warning) follow
    `tfmetric.metrics.evaluate_retrieval`.

    Args:
        query: Probe embeddings, shape `(n, d)`.
        query_labels: Integer identities of the probes, shape `(n,)`.
        gallery: Gallery embeddings `(m, d)`, or `None` for leave-one-out.
        gallery_labels: Integer identities of the gallery, shape `(m,)`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        max_rank: Length of the curve. Defaults to `10`.

    Returns:
        A float64 numpy array of shape `(max_rank,)`, non-decreasing.

    Example:

    >>> probe = np.array([[0.0], [2.0]])
    >>> gallery = np.array([[0.2], [1.0], [3.2]])
    >>> tfmetric.metrics.cmc_curve(probe, [0, 2], gallery, [0, 1, 2], max_rank=3).tolist()
    [0.5, 1.0, 1.0]

    Reference:
        Moon, Phillips. "Computational and performance aspects of PCA-based
        face-recognition algorithms". Perception, 2001.
    """
    max_rank = validation.check_int(max_rank, "max_rank")
    query, query_labels, gallery, gallery_labels = _ranking.prepare_retrieval_inputs(
        query, query_labels, gallery, gallery_labels
    )
    # The top-k search (k = max R) with the first relevant rank exact up to `max_rank`.
    ranks = _topk.ranks(
        query, query_labels, gallery, gallery_labels, distance, first_rank_up_to=max_rank
    )
    keep = _ranking.evaluated_queries(ranks)
    first = ranks.first_rank[keep]
    return np.array([np.mean(first <= k) for k in range(1, max_rank + 1)], np.float64)
