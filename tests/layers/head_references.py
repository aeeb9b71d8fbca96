"""Numpy references (float64, loops) for the proxy heads, written from the papers' formulas."""

import math

import numpy as np


def normalize(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def cosines(embeddings, proxies, centers=1):
    """cos(theta_j) per sample and class; with sub-centers, the max over a class's centers."""
    x, w = normalize(embeddings), normalize(proxies)
    num_classes = len(w) // centers
    out = np.zeros((len(x), num_classes))
    for i in range(len(x)):
        for j in range(num_classes):
            out[i, j] = max(x[i] @ w[j * centers + k] for k in range(centers))
    return out


def softmax_cross_entropy(logits, label):
    top = np.max(logits)
    return -(logits[label] - top - math.log(np.sum(np.exp(logits - top))))


def arcface(embeddings, labels, proxies, margin, scale, centers=1, easy_margin=False):
    """Deng et al. 2019, eq. (3): s cos(theta_y + m) for the target class.

    Where theta_y + m would pass pi (cos(theta) <= cos(pi - m)), the official
    implementation uses cos(theta_y) - m sin(m); `easy_margin` keeps
    cos(theta_y) wherever cos(theta_y) <= 0.
    """
    cos = cosines(embeddings, proxies, centers)
    out = []
    for i, y in enumerate(labels):
        logits = scale * cos[i].copy()
        theta = math.acos(min(1.0, max(-1.0, cos[i, y])))
        if easy_margin:
            target = math.cos(theta + margin) if cos[i, y] > 0 else cos[i, y]
        elif theta + margin < math.pi:
            target = math.cos(theta + margin)
        else:
            target = cos[i, y] - margin * math.sin(margin)
        logits[y] = scale * target
        out.append(softmax_cross_entropy(logits, y))
    return np.array(out)


def cosface(embeddings, labels, proxies, margin, scale):
    """Wang et al. 2018, eq. (4): s (cos(theta_y) - m) for the target class."""
    cos = cosines(embeddings, proxies)
    out = []
    for i, y in enumerate(labels):
        logits = scale * cos[i].copy()
        logits[y] = scale * (cos[i, y] - margin)
        out.append(softmax_cross_entropy(logits, y))
    return np.array(out)


def normalized_softmax(embeddings, labels, proxies, temperature):
    """Zhai & Wu 2018, eq. (2): softmax over cos(theta_j) / temperature."""
    cos = cosines(embeddings, proxies)
    return np.array([softmax_cross_entropy(cos[i] / temperature, y) for i, y in enumerate(labels)])


def proxy_anchor(embeddings, labels, proxies, margin, alpha):
    """Kim et al. 2020, eq. (4); returns the batch loss (a scalar)."""
    cos = cosines(embeddings, proxies)
    num_classes = len(proxies)
    positive_sum, with_positive, negative_sum = 0.0, 0, 0.0
    for p in range(num_classes):
        pos = [
            math.exp(-alpha * (cos[i, p] - margin)) for i in range(len(labels)) if labels[i] == p
        ]
        neg = [math.exp(alpha * (cos[i, p] + margin)) for i in range(len(labels)) if labels[i] != p]
        if pos:
            with_positive += 1
            positive_sum += math.log(1.0 + sum(pos))
        negative_sum += math.log(1.0 + sum(neg))
    return positive_sum / max(with_positive, 1) + negative_sum / num_classes


def proxy_nca(embeddings, labels, proxies, scale):
    """Movshovitz-Attias et al. 2017, eq. (6) on unit vectors, distances scaled by `scale`."""
    x, w = normalize(embeddings), normalize(proxies)
    out = []
    for i, y in enumerate(labels):
        d = np.array([np.sum((x[i] - w[z]) ** 2) for z in range(len(w))]) * scale
        negatives = sum(math.exp(-d[z]) for z in range(len(w)) if z != y)
        out.append(-math.log(math.exp(-d[y]) / negatives))
    return np.array(out)
