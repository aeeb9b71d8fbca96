"""Numpy references written from the papers' definitions (float64, naive loops).

They are deliberately simple: one Python loop per anchor/pair/triplet over a
distance matrix whose every entry is the textbook formula of its pair.
"""

import numpy as np


def pairwise(x, y, distance):
    """Distance matrix from the textbook definitions, every (x[i], y[j]) pair by broadcasting."""
    x = np.asarray(x, np.float64)[:, None, :]
    y = np.asarray(y, np.float64)[None, :, :]
    diff = x - y
    if distance == "euclidean":
        return np.sqrt(np.sum(diff**2, axis=-1))
    if distance == "squared_euclidean":
        return np.sum(diff**2, axis=-1)
    if distance == "manhattan":
        return np.sum(np.abs(diff), axis=-1)
    if distance == "cosine":
        nx, ny = np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1)
        zero = (nx == 0) | (ny == 0)
        cos = np.sum(x * y, axis=-1) / np.where(zero, 1.0, nx * ny)
        return 1.0 - np.where(zero, 0.0, cos)
    if distance == "inner_product":
        return np.sum(x * y, axis=-1)
    if isinstance(distance, tuple) and distance[0] == "minkowski":
        return np.sum(np.abs(diff) ** distance[1], axis=-1) ** (1.0 / distance[1])
    raise ValueError(distance)


def _oriented(embeddings, distance):
    d = pairwise(embeddings, embeddings, distance)
    return -d if distance == "inner_product" else d


def triplet(labels, embeddings, margin=1.0, distance="euclidean", mining="semi-hard", soft=False):
    """Triplet loss (FaceNet / Hermans et al.) with the documented normalisation."""
    labels = np.asarray(labels).reshape(-1)
    d = _oriented(embeddings, distance)
    n = len(labels)

    def term(gap):
        return np.log1p(np.exp(gap)) if soft else max(gap + margin, 0.0)

    positives = {a: [p for p in range(n) if p != a and labels[p] == labels[a]] for a in range(n)}
    negatives = {a: [q for q in range(n) if labels[q] != labels[a]] for a in range(n)}
    if mining == "hard":
        terms = [
            term(max(d[a, p] for p in positives[a]) - min(d[a, q] for q in negatives[a]))
            for a in range(n)
            if positives[a] and negatives[a]
        ]
        return float(np.mean(terms)) if terms else 0.0
    if mining == "semi-hard":
        terms = []
        for a in range(n):
            if not negatives[a]:
                continue
            for p in positives[a]:
                farther = [d[a, q] for q in negatives[a] if d[a, q] > d[a, p]]
                d_an = min(farther) if farther else max(d[a, q] for q in negatives[a])
                terms.append(term(d[a, p] - d_an))
        return float(np.mean(terms)) if terms else 0.0
    terms = [term(d[a, p] - d[a, q]) for a in range(n) for p in positives[a] for q in negatives[a]]
    if soft:
        return float(np.mean(terms)) if terms else 0.0
    nonzero = [t for t in terms if t > 0]
    return float(np.sum(nonzero) / len(nonzero)) if nonzero else 0.0


def contrastive(labels, embeddings, margin=1.0, distance="euclidean"):
    """Hadsell et al. 2006 over all ordered pairs i != j (no 1/2 factor)."""
    labels = np.asarray(labels).reshape(-1)
    d = pairwise(embeddings, embeddings, distance)
    n = len(labels)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if distance == "inner_product":
                cost = max(margin - d[i, j], 0) ** 2 if labels[i] == labels[j] else max(d[i, j], 0) ** 2
            else:
                cost = d[i, j] ** 2 if labels[i] == labels[j] else max(margin - d[i, j], 0) ** 2
            total += cost
    return total / (n * (n - 1)) if n > 1 else 0.0


def numeric_gradient(fn, x, eps=1e-6):
    """Central finite differences of a scalar numpy function."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (fn(up) - fn(down)) / (2 * eps)
    return grad
