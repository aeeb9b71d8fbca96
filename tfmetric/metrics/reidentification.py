"""Person re-identification: camera-aware CMC and mAP (Market-1501 / DukeMTMC rules).

Each query is ranked against the gallery by distance. As in the Market-1501
evaluation, gallery images that show the query's identity *from the query's
camera* are removed from its ranking (finding them is trivial), and so are
"junk" images (identity `junk_label`, `-1` in Market-1501's file names).
Distractors (identity `0` in Market-1501) stay, as wrong matches. The
correct matches ("good") are the remaining images of the query's identity,
all from other cameras. Queries without any good match are left out of the
averages (their number is returned).

- CMC at rank `k`: fraction of queries with a good match among the first `k`.
- AP: mean over the good matches of the precision at their rank; mAP its mean
  over the queries (the definition of open-reid / torchreid; the original
  Market-1501 MATLAB code interpolates the precision between ranks and gives
  slightly different values).

Ties are broken pessimistically, as in `tfmetric.metrics.evaluate_retrieval`:
a wrong match at the same distance as a good one is ranked before it.

Reference:
    Zheng, Shen, Tian, Wang, Wang, Tian. "Scalable Person Re-identification:
    A Benchmark". ICCV 2015.
"""

import numbers

import numpy as np

from tfmetric import distances as distances_lib
from tfmetric._src import centring, inputs, validation

# Largest (queries × gallery) block of distances held at once.
_BLOCK_ELEMENTS = 1 << 22


def _check_set(value, name):
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(
            f"`{name}` must be a tuple (embeddings, identities, cameras); got {type(value)}."
        )
    embeddings = inputs.check_embedding_array(value[0], f"{name}[0] (embeddings)")
    n = embeddings.shape[0]
    identities = inputs.check_label_array(value[1], f"{name}[1] (identities)", n, f"{name}[0]")
    cameras = inputs.check_label_array(value[2], f"{name}[2] (cameras)", n, f"{name}[0]")
    return embeddings, identities, cameras


def reid_scores(query, gallery, distance="euclidean", max_rank=20, junk_label=-1):
    """Camera-aware CMC curve and mAP of a re-identification query/gallery split.

    Args:
        query: `(embeddings (n, d), identities (n,), cameras (n,))`.
        gallery: `(embeddings (m, d), identities (m,), cameras (m,))`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        max_rank: Length of the CMC curve. Defaults to `20`.
        junk_label: Gallery identity of junk images (an integer), excluded
            from every ranking and never a good match; `None` for none.
            Defaults to `-1`.

    Returns:
        A dict: `cmc` (float64 array `(max_rank,)`), `rank_1`,
        `mean_average_precision`, `num_queries` (evaluated) and
        `num_skipped` (queries without a good match).

    Raises:
        ValueError: for mismatched shapes or sizes, a `junk_label` that is
            not an integer, or when no query has a good match.

    Example:

    >>> query = (np.array([[0.0]]), [1], [1])
    >>> gallery = (np.array([[0.1], [0.2], [0.3], [0.4]]), [1, 2, 1, -1], [1, 2, 2, 3])
    >>> scores = tfmetric.metrics.reid_scores(query, gallery, max_rank=3)
    >>> scores["cmc"].tolist(), scores["mean_average_precision"]
    ([0.0, 1.0, 1.0], 0.5)
    """
    q, q_id, q_cam = _check_set(query, "query")
    g, g_id, g_cam = _check_set(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"`query` and `gallery` embeddings must have the same size; got {q.shape[1]} and "
            f"{g.shape[1]}."
        )
    max_rank = validation.check_int(max_rank, "max_rank")
    distance = distances_lib.get(distance)
    if junk_label is not None and (
        isinstance(junk_label, (bool, np.bool_)) or not isinstance(junk_label, numbers.Integral)
    ):
        raise ValueError(
            f"`junk_label` must be an integer identity (Market-1501: -1) or None; got "
            f"{junk_label!r}."
        )
    junk = np.zeros(len(g), bool) if junk_label is None else g_id == int(junk_label)
    chunk = max(1, _BLOCK_ELEMENTS // max(1, len(g)))
    shift = centring.offset(distance, g)  # float64 euclidean distances (`centring`)
    cmc_hits = np.zeros(max_rank)
    ap_sum, evaluated = 0.0, 0
    for begin in range(0, len(q), chunk):
        rows = slice(begin, begin + chunk)
        d = centring.dissimilarities(distance, q[rows], g, shift)
        # A junk image is never a good match, even for a query of the junk identity.
        good = (
            (g_id[None, :] == q_id[rows, None])
            & (g_cam[None, :] != q_cam[rows, None])
            & ~junk[None, :]
        )
        excluded = junk[None, :] | (
            (g_id[None, :] == q_id[rows, None]) & (g_cam[None, :] == q_cam[rows, None])
        )
        # Excluded images go last; among equal distances good matches go after wrong ones.
        order = np.lexsort((good, np.where(excluded, np.inf, d), excluded), axis=-1)
        ranked_good = np.take_along_axis(good, order, axis=1)
        num_good = ranked_good.sum(axis=1)
        hits = np.cumsum(ranked_good, axis=1)
        positions = np.arange(1, len(g) + 1)[None, :]
        precision = np.where(ranked_good, hits / positions, 0.0)
        keep = num_good > 0
        ap_sum += float(np.sum(precision.sum(axis=1)[keep] / num_good[keep]))
        evaluated += int(keep.sum())
        width = min(max_rank, len(g))
        found = hits[keep, :width] > 0
        cmc_hits[:width] += found.sum(axis=0)
        cmc_hits[width:] += found[:, -1].sum() if width else 0
    if not evaluated:
        raise ValueError(
            "No query has a good match (same identity from another camera, not junk) in the "
            "gallery."
        )
    cmc = cmc_hits / evaluated
    return {
        "cmc": cmc,
        "rank_1": float(cmc[0]),
        "mean_average_precision": ap_sum / evaluated,
        "num_queries": evaluated,
        "num_skipped": len(q) - evaluated,
    }
