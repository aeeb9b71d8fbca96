"""Retrieval metrics: precision@1, recall@k, R-precision, MAP@R, mAP, MRR.

Definitions follow Musgrave et al., "A Metric Learning Reality Check" (ECCV
2020) and pytorch-metric-learning's `AccuracyCalculator`. For a query with
label `y`, the *references* are the gallery embeddings (or, with no gallery,
the other queries: the query itself is excluded by position, duplicates of it
are kept; passing the queries again as `gallery` excludes nothing). The relevant references are those labelled `y`; `R` is their
number. References are ranked by increasing distance (decreasing similarity for
similarities such as `"inner_product"`).

- `precision_at_1`: fraction of queries whose nearest reference is relevant.
- `recall_at_k`: fraction of queries with at least one relevant reference among
  the `k` nearest (the "Recall@K" of Song et al. 2016, i.e. a hit rate).
- `r_precision`: mean of `(#relevant among the R nearest) / R`.
- `map_at_r`: mean of `(1/R) Σ_{i<=R} P(i) rel(i)`, `P(i)` the precision of the
  `i` nearest and `rel(i)` whether the `i`-th is relevant.
- `mean_average_precision`: the same sum over the whole ranking (classic AP).
- `mean_reciprocal_rank`: mean of `1 / rank of the first relevant reference`.

Ties are broken pessimistically: a non-relevant reference at the same distance
as a relevant one ranks before it, so results never depend on storage order
and are a lower bound of what any tie-break gives (pytorch-metric-learning
keeps the order its k-NN search returns; results differ only on exact ties).

Queries without any relevant reference (`R = 0`, their label absent from the
gallery) are excluded from every average, with a warning giving their number;
a `ValueError` is raised if no query has a relevant reference. `k` larger than
the number of references is allowed (every remaining query then counts as a
hit).

Computation is chunked and XLA-compiled, never O(queries × gallery) in memory.
Without `mean_average_precision`, the metrics come from an exact top-k search
with k = max R (`tfmetric.metrics._topk`, gallery scanned in blocks: memory
O(chunk × block)), as fast as a faiss k-NN search; the full-ranking mAP counts,
for every reference, the relevant references closer than it
(`tfmetric.metrics._ranking`: a grid lookup and a few probes per pair, memory
O(chunk × (gallery + max R))), about 1.5-2x the top-k path's time: ask for it
only when needed. Chunks of queries run concurrently on the CPU cores.
"""

import numpy as np

from tfmetric import distances as distances_lib
from tfmetric._src import validation
from tfmetric.metrics import _ranking, _topk
from tfmetric.metrics.clustering import clustering_scores

RANKING_METRICS = (
    "precision_at_1",
    "recall_at_k",
    "r_precision",
    "map_at_r",
    "mean_average_precision",
    "mean_reciprocal_rank",
)
CLUSTERING_METRICS = ("nmi", "ami")
ALL_METRICS = RANKING_METRICS + CLUSTERING_METRICS


def _ranks(query, query_labels, gallery, gallery_labels, distance, names, ks):
    """Top-k search (k = max R) unless mAP (the whole ranking) is asked for or R is huge."""
    # The rank of a first relevant reference beyond the top K matters only
    # to the reciprocal rank and to recall@k for a k beyond K.
    if "mean_reciprocal_rank" in names:
        up_to = None
    else:
        up_to = max(ks) if "recall_at_k" in names else 1
    return _topk.ranks(
        query,
        query_labels,
        gallery,
        gallery_labels,
        distance,
        first_rank_up_to=up_to,
        whole_ranking="mean_average_precision" in names,
    )


def _ranking_scores(ranks, keep, ks):
    r = ranks.num_relevant[keep].astype(np.float64)
    first = ranks.first_rank[keep]
    scores = {
        "precision_at_1": float(np.mean(first == 1)),
        "r_precision": float(np.mean(ranks.r_hits[keep] / r)),
        "map_at_r": float(np.mean(ranks.map_at_r_sum[keep] / r)),
        "mean_average_precision": float(np.mean(ranks.ap_sum[keep] / r)),
        "mean_reciprocal_rank": float(np.mean(1.0 / first)),
    }
    for k in ks:
        scores[f"recall_at_{k}"] = float(np.mean(first <= k))
    return scores


def evaluate_retrieval(
    query,
    query_labels,
    gallery=None,
    gallery_labels=None,
    distance="euclidean",
    k=(1, 5, 10),
    metrics=None,
    seed=0,
):
    """Computes the standard retrieval metrics of a labelled embedding set.

    See the module docstring for the definitions, the treatment of ties, of the
    query itself and of queries whose label is absent from the gallery.

    Args:
        query: Query embeddings, shape `(n, d)`.
        query_labels: Integer labels of the queries, shape `(n,)`.
        gallery: Reference embeddings, shape `(m, d)`, or `None` to search
            every query against the other queries (leave-one-out). Defaults to
            `None`.
        gallery_labels: Integer labels of the gallery, shape `(m,)`; required
            with `gallery`.
        distance: Name, config or `tfmetric.distances.Distance`; similarities
            rank larger values first. Defaults to `"euclidean"`.
        k: The `k` of `recall_at_k`, an int or a sequence. Defaults to
            `(1, 5, 10)`.
        metrics: Names to compute, among `"precision_at_1"`, `"recall_at_k"`,
            `"r_precision"`, `"map_at_r"`, `"mean_average_precision"`,
            `"mean_reciprocal_rank"`, `"nmi"`, `"ami"`; `None` for all.
            Defaults to `None`.
        seed: Seed of the k-means clustering behind `nmi` and `ami`. Defaults
            to `0`.

    Returns:
        A flat dict of floats: `precision_at_1`, `recall_at_{k}` for each `k`,
        `r_precision`, `map_at_r`, `mean_average_precision`,
        `mean_reciprocal_rank`, `nmi`, `ami` (those asked for).

    Raises:
        ValueError: for malformed, mismatched or non-finite inputs, unknown
            metric names, `k < 1`, or when no query has a relevant reference.

    Example:

    >>> x = np.array([[0.0], [0.1], [1.0], [1.1], [5.0]])
    >>> y = np.array([0, 0, 1, 1, 0])
    >>> scores = tfmetric.metrics.evaluate_retrieval(x, y, k=(1, 2), metrics=[
    ...     "precision_at_1", "recall_at_k", "map_at_r"])
    >>> {name: round(value, 3) for name, value in scores.items()}
    {'precision_at_1': 0.8, 'recall_at_1': 0.8, 'recall_at_2': 0.8, 'map_at_r': 0.6}

    Reference:
        Musgrave, Belongie, Lim. "A Metric Learning Reality Check". ECCV 2020.
    """
    names = ALL_METRICS if metrics is None else tuple(metrics)
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown or not names:
        raise ValueError(
            f"`metrics` must be a non-empty subset of {list(ALL_METRICS)}; got {metrics!r}."
        )
    ks = validation.check_ints(k, "k")
    seed = validation.check_seed(seed)
    distance = distances_lib.get(distance)
    query, query_labels, gallery, gallery_labels = _ranking.prepare_retrieval_inputs(
        query, query_labels, gallery, gallery_labels
    )
    results = {}
    if any(name in RANKING_METRICS for name in names):
        ranks = _ranks(query, query_labels, gallery, gallery_labels, distance, names, ks)
        scores = _ranking_scores(ranks, _ranking.evaluated_queries(ranks), ks)
        for name in names:
            if name == "recall_at_k":
                results.update({f"recall_at_{v}": scores[f"recall_at_{v}"] for v in ks})
            elif name in scores:
                results[name] = scores[name]
    if any(name in CLUSTERING_METRICS for name in names):
        clusters = clustering_scores(query, query_labels, distance=distance, seed=seed)
        results.update({name: clusters[name] for name in CLUSTERING_METRICS if name in names})
    return results


def _single(name, query, query_labels, gallery, gallery_labels, distance, k=1):
    return evaluate_retrieval(
        query, query_labels, gallery, gallery_labels, distance=distance, k=k, metrics=[name]
    )


def precision_at_1(query, query_labels, gallery=None, gallery_labels=None, distance="euclidean"):
    """Fraction of queries whose nearest reference shares their label.

    Arguments and conventions as in `evaluate_retrieval`.

    Example:

    >>> x = np.array([[0.0], [0.1], [1.0], [1.1], [5.0]])
    >>> tfmetric.metrics.precision_at_1(x, np.array([0, 0, 1, 1, 0]))
    0.8
    """
    return _single("precision_at_1", query, query_labels, gallery, gallery_labels, distance)[
        "precision_at_1"
    ]


def recall_at_k(query, query_labels, gallery=None, gallery_labels=None, distance="euclidean", k=1):
    """Fraction of queries with a same-label reference among their `k` nearest.

    Arguments and conventions as in `evaluate_retrieval`; `k` is one int.

    Example:

    >>> x = np.array([[0.0], [0.1], [1.0], [1.3]])
    >>> tfmetric.metrics.recall_at_k(x, np.array([0, 1, 0, 1]), k=2)
    0.5

    Reference:
        Song, Xiang, Jegelka, Savarese. "Deep Metric Learning via Lifted
        Structured Feature Embedding". CVPR 2016.
    """
    k = validation.check_int(k, "k")
    scores = _single("recall_at_k", query, query_labels, gallery, gallery_labels, distance, k)
    return scores[f"recall_at_{k}"]


def r_precision(query, query_labels, gallery=None, gallery_labels=None, distance="euclidean"):
    """Mean over queries of the fraction of relevant references among the `R` nearest.

    Arguments and conventions as in `evaluate_retrieval`.

    Example:

    >>> x = np.array([[0.0], [0.1], [1.0], [1.1], [5.0]])
    >>> tfmetric.metrics.r_precision(x, np.array([0, 0, 1, 1, 0]))
    0.6

    Reference:
        Musgrave, Belongie, Lim. "A Metric Learning Reality Check". ECCV 2020.
    """
    return _single("r_precision", query, query_labels, gallery, gallery_labels, distance)[
        "r_precision"
    ]


def map_at_r(query, query_labels, gallery=None, gallery_labels=None, distance="euclidean"):
    """Mean average precision at R (MAP@R).

    For a query with `R` relevant references, `(1/R) Σ_{i=1..R} P(i) rel(i)`.
    Arguments and conventions as in `evaluate_retrieval`.

    Example:

    >>> x = np.array([[0.0], [0.1], [0.3], [2.0], [2.5]])
    >>> round(tfmetric.metrics.map_at_r(x, np.array([0, 0, 1, 1, 1]), distance="manhattan"), 4)
    0.8

    Reference:
        Musgrave, Belongie, Lim. "A Metric Learning Reality Check". ECCV 2020.
    """
    return _single("map_at_r", query, query_labels, gallery, gallery_labels, distance)["map_at_r"]


def mean_average_precision(
    query, query_labels, gallery=None, gallery_labels=None, distance="euclidean"
):
    """Mean average precision over the full ranking of the references.

    Arguments and conventions as in `evaluate_retrieval`.

    Example:

    >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> round(tfmetric.metrics.mean_average_precision(x, np.array([0, 1, 0, 1])), 4)
    0.4167
    """
    return _single(
        "mean_average_precision", query, query_labels, gallery, gallery_labels, distance
    )["mean_average_precision"]


def mean_reciprocal_rank(
    query, query_labels, gallery=None, gallery_labels=None, distance="euclidean"
):
    """Mean over queries of `1 / rank` of the first relevant reference.

    Arguments and conventions as in `evaluate_retrieval`.

    Example:

    >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> round(tfmetric.metrics.mean_reciprocal_rank(x, np.array([0, 1, 0, 1])), 4)
    0.4167
    """
    return _single("mean_reciprocal_rank", query, query_labels, gallery, gallery_labels, distance)[
        "mean_reciprocal_rank"
    ]
