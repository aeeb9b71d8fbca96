"""Held-out numbers of the trainer: retrieval and verification on the test split.

Retrieval is leave-one-out within the held-out split: every test sample queries
all the other test samples (`tfmetric.metrics.evaluate_retrieval` without a
gallery): Precision@1, R-precision and MAP@R, R being the number of other test
samples with the query's label (Musgrave et al., "A Metric Learning Reality
Check", 2020). Verification scores pairs of test samples by their distance
(all pairs, or a seeded sample beyond `max_pairs`): ROC AUC and equal error
rate (`tfmetric.metrics.roc_auc`, `equal_error_rate`).
"""

import numpy as np
from sklearn import metrics as sk_metrics

from tfmetric import distances as distances_lib
from tfmetric import metrics

RETRIEVAL_KEYS = ("precision_at_1", "map_at_r", "r_precision")
VERIFICATION_KEYS = ("roc_auc", "eer")
_CHUNK = 1024
_FULL_MATRIX = 4096


def _dissimilarity(distance, queries, references):
    matrix = np.asarray(distance(queries, references), np.float64)
    return -matrix if distance.is_similarity else matrix


def nearest_neighbors(embeddings, k, distance="euclidean"):
    """Indices `(N, k)` of each sample's k nearest other samples, closest first."""
    distance = distances_lib.get(distance)
    x = np.asarray(embeddings, np.float32)
    k = min(k, len(x) - 1)
    out = np.empty((len(x), k), np.int64)
    for start in range(0, len(x), _CHUNK):
        d = _dissimilarity(distance, x[start : start + _CHUNK], x)
        rows = np.arange(d.shape[0])
        d[rows, start + rows] = np.inf
        out[start : start + _CHUNK] = np.argsort(d, axis=1, kind="stable")[:, :k]
    return out


def verification_pairs(labels, max_pairs=200_000, seed=0):
    """Pairs `(i, j)`, `i < j`, of test samples: all of them, or a seeded sample."""
    n = len(labels)
    if n * (n - 1) // 2 <= max_pairs:
        return np.triu_indices(n, k=1)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = (i + rng.integers(1, n, size=max_pairs)) % n
    return np.minimum(i, j), np.maximum(i, j)


def pair_dissimilarities(embeddings, pairs, distance):
    """Dissimilarity of each pair (a similarity is negated): smaller = more alike."""
    distance = distances_lib.get(distance)
    x = np.asarray(embeddings, np.float32)
    i, j = pairs
    if len(x) <= _FULL_MATRIX:
        matrix = np.empty((len(x), len(x)), np.float64)
        for start in range(0, len(x), _CHUNK):
            matrix[start : start + _CHUNK] = _dissimilarity(distance, x[start : start + _CHUNK], x)
        return matrix[i, j]
    out = np.empty(len(i), np.float64)
    # Matched rows through the pairwise API: the diagonal of small blocks.
    for start in range(0, len(i), 256):
        block = _dissimilarity(distance, x[i[start : start + 256]], x[j[start : start + 256]])
        out[start : start + 256] = np.diagonal(block)
    return out


def evaluate(embeddings, labels, distance="euclidean", max_pairs=200_000, seed=0):
    """Held-out retrieval and verification numbers of one set of embeddings.

    Args:
        embeddings: `(N, D)` test embeddings (or flattened raw inputs).
        labels: `(N,)` integer labels.
        distance: A `tfmetric.distances` name or instance.
        max_pairs: Verification uses all pairs up to this many, else a sample.
        seed: Seed of the pair sample.

    Returns:
        `(numbers, roc)`: a dict with `precision_at_1`, `map_at_r`,
        `r_precision`, `roc_auc`, `eer` (and `verification_pairs`), and the
        `(fpr, tpr)` arrays of the ROC curve.

    Raises:
        ValueError: for non-finite embeddings (a diverged model).
    """
    embeddings = np.asarray(embeddings, np.float32).reshape(len(labels), -1)
    labels = np.asarray(labels, np.int64)
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("The held-out embeddings hold NaN or Inf: training diverged.")
    numbers = metrics.evaluate_retrieval(
        embeddings, labels, distance=distance, metrics=RETRIEVAL_KEYS
    )
    numbers = {key: float(numbers[key]) for key in RETRIEVAL_KEYS}
    pairs = verification_pairs(labels, max_pairs, seed)
    same = labels[pairs[0]] == labels[pairs[1]]
    dissimilarity = pair_dissimilarities(embeddings, pairs, distance)
    numbers["roc_auc"] = float(metrics.roc_auc(same, dissimilarity))
    numbers["eer"] = float(metrics.equal_error_rate(same, dissimilarity))
    numbers["verification_pairs"] = int(len(same))
    fpr, tpr, _ = sk_metrics.roc_curve(same, -dissimilarity)
    return numbers, (fpr, tpr)
