"""Numpy references for retrieval metrics, written from the definitions.

Naive and slow on purpose: full distance matrix in float64, one Python loop
per query, the ranking built by an explicit sort.
"""

import numpy as np


def distance_matrix(x, y, distance):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if distance == "euclidean":
        return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    if distance == "squared_euclidean":
        return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    if distance == "manhattan":
        return np.abs(x[:, None, :] - y[None, :, :]).sum(-1)
    if distance == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        yn = y / np.linalg.norm(y, axis=1, keepdims=True)
        return 1.0 - xn @ yn.T
    if distance == "inner_product":
        return x @ y.T
    raise ValueError(distance)


def ranked_relevance(query, query_labels, gallery, gallery_labels, distance, similarity=False):
    """Per query, the relevance (0/1) of the references in ranked order.

    The query itself is dropped in leave-one-out mode (gallery None); ties put
    non-relevant references first (pessimistic).
    """
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = query, query_labels
    d = distance_matrix(query, gallery, distance)
    if similarity:
        d = -d
    lists = []
    for i in range(len(query)):
        refs = [j for j in range(len(gallery)) if not (leave_one_out and j == i)]
        rel = np.array([int(gallery_labels[j] == query_labels[i]) for j in refs])
        dist = np.array([d[i, j] for j in refs])
        order = sorted(range(len(refs)), key=lambda t: (dist[t], rel[t]))
        lists.append(rel[order])
    return lists


def metrics_from_relevance(lists, ks=(1, 5)):
    """Metrics of Musgrave et al. 2020 from ranked relevance lists (R > 0 only)."""
    p1, rprec, mapr, ap, rr = [], [], [], [], []
    recall = {k: [] for k in ks}
    for rel in lists:
        r = int(rel.sum())
        if r == 0:
            continue
        positions = np.arange(1, len(rel) + 1)
        precision_at = np.cumsum(rel) / positions
        p1.append(float(rel[0]))
        rprec.append(rel[:r].sum() / r)
        mapr.append(np.sum(precision_at[:r] * rel[:r]) / r)
        ap.append(np.sum(precision_at * rel) / r)
        rr.append(1.0 / (np.argmax(rel) + 1))
        for k in ks:
            recall[k].append(float(rel[:k].any()))
    out = {
        "precision_at_1": np.mean(p1),
        "r_precision": np.mean(rprec),
        "map_at_r": np.mean(mapr),
        "mean_average_precision": np.mean(ap),
        "mean_reciprocal_rank": np.mean(rr),
    }
    out.update({f"recall_at_{k}": np.mean(v) for k, v in recall.items()})
    return out


def mutual_information_scores(labels, clusters):
    """NMI (arithmetic normalisation) from the contingency table."""
    labels = np.asarray(labels)
    clusters = np.asarray(clusters)
    n = len(labels)
    mi = 0.0
    for a in np.unique(labels):
        for b in np.unique(clusters):
            joint = np.sum((labels == a) & (clusters == b)) / n
            if joint > 0:
                pa = np.mean(labels == a)
                pb = np.mean(clusters == b)
                mi += joint * np.log(joint / (pa * pb))

    def entropy(v):
        p = np.unique(v, return_counts=True)[1] / n
        return -np.sum(p * np.log(p))

    return mi / ((entropy(labels) + entropy(clusters)) / 2)
