"""Float64 numpy references for the fuzz suite, written from the definitions.

Each is scale-aware where float64 itself would overflow (Minkowski with a
large `p` is computed relative to the largest coordinate difference).
"""

import numpy as np


def _diffs(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return x[:, None, :] - y[None, :, :]


def minkowski(x, y, p):
    diff = np.abs(_diffs(x, y))
    peak = diff.max(axis=2, initial=0.0)
    if p == np.inf:
        return peak
    safe = np.where(peak > 0, peak, 1.0)
    return peak * np.sum((diff / safe[..., None]) ** p, axis=2) ** (1.0 / p)


def cosine(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x = x / np.abs(x).max(axis=1, keepdims=True)  # float64 overflows at 1e155: stay scale-free
    y = y / np.abs(y).max(axis=1, keepdims=True)
    cos = (x @ y.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1))
    return 1.0 - cos


def jaccard(x, y, weighted):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if weighted:
        x, y = np.maximum(x, 0.0), np.maximum(y, 0.0)
        low = np.minimum(x[:, None, :], y[None, :, :]).sum(axis=2)
        high = np.maximum(x[:, None, :], y[None, :, :]).sum(axis=2)
        return np.where(high > 0, 1.0 - low / np.where(high > 0, high, 1.0), 0.0)
    dot = x @ y.T
    union = (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - dot
    return np.where(union > 0, 1.0 - dot / np.where(union > 0, union, 1.0), 0.0)


def pairwise(x, y, name, **config):
    """The `(n, m)` matrix of the distance called `name` (a `tfmetric.distances` name)."""
    if name == "euclidean":
        return minkowski(x, y, 2.0)
    if name == "squared_euclidean":
        return minkowski(x, y, 2.0) ** 2
    if name == "manhattan":
        return minkowski(x, y, 1.0)
    if name == "minkowski":
        return minkowski(x, y, config.get("p", 2.0))
    if name == "cosine":
        return cosine(x, y)
    if name == "inner_product":
        return np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    if name == "jaccard":
        return jaccard(x, y, config.get("weighted", False))
    raise ValueError(name)


def precision_at_1(embeddings, labels):
    """Leave-one-out precision@1 with euclidean distances, ties broken pessimistically."""
    e = np.asarray(embeddings, np.float64)
    e = e / np.abs(e).max()
    d = minkowski(e, e, 2.0)
    np.fill_diagonal(d, np.inf)
    hits = []
    for i in range(len(e)):
        others = [j for j in range(len(e)) if j != i]
        if not any(labels[j] == labels[i] for j in others):
            continue
        nearest = d[i].min()
        tied = [j for j in others if d[i, j] == nearest]
        hits.append(all(labels[j] == labels[i] for j in tied))
    return float(np.mean(hits))
