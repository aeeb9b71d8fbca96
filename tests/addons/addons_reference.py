"""Float64 numpy references for tfmetric.addons, written from the losses' definitions.

Each follows TensorFlow Addons' documented conventions (which negative stands in
when there is none, what the loss is averaged over) with plain loops over pairs
and triplets; nothing here calls the code under test.
"""

import numpy as np


def distance_matrix(x, metric):
    x = np.asarray(x, np.float64)
    n = len(x)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if metric == "L2":
                out[i, j] = np.sqrt(np.sum((x[i] - x[j]) ** 2))
            elif metric == "squared-L2":
                out[i, j] = np.sum((x[i] - x[j]) ** 2)
            elif metric == "angular":
                norms = np.linalg.norm(x[i]) * np.linalg.norm(x[j])
                cos = x[i] @ x[j] / norms if norms > 0 else 0.0  # a zero row: cos 0
                out[i, j] = max(1.0 - cos, 1e-16)
            elif metric == "L1":
                out[i, j] = np.sum(np.abs(x[i] - x[j]))
            else:
                raise ValueError(metric)
    return out


def triplet_semihard(labels, x, margin=1.0, metric="L2"):
    """FaceNet semi-hard mining: mean over positive pairs (a, p) of
    max(margin + d(a, p) - d(a, n), 0), n the closest negative farther than p,
    else the farthest negative, else (no negatives) the row minimum."""
    d = distance_matrix(x, metric)
    n = len(labels)
    total, pairs = 0.0, 0
    for a in range(n):
        negatives = [d[a, k] for k in range(n) if labels[k] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            pairs += 1
            farther = [v for v in negatives if v > d[a, p]]
            if farther:
                d_an = min(farther)
            elif negatives:
                d_an = max(negatives)
            else:
                d_an = d[a].min()
            total += max(margin + d[a, p] - d_an, 0.0)
    return total / pairs if pairs else 0.0


def triplet_hard(labels, x, margin=1.0, soft=False, metric="L2"):
    """Batch-hard: mean over all anchors; a missing positive (negative) is
    replaced by the row minimum (maximum) of the distance matrix."""
    d = distance_matrix(x, metric)
    n = len(labels)
    terms = []
    for a in range(n):
        pos = [d[a, k] for k in range(n) if k != a and labels[k] == labels[a]]
        neg = [d[a, k] for k in range(n) if labels[k] != labels[a]]
        d_ap = max(pos) if pos else d[a].min()
        d_an = min(neg) if neg else d[a].max()
        gap = d_ap - d_an
        terms.append(np.log1p(np.exp(gap)) if soft else max(gap + margin, 0.0))
    return float(np.mean(terms))


def contrastive(similar, dist, margin=1.0):
    similar = np.asarray(similar, np.float64)
    dist = np.asarray(dist, np.float64)
    return similar * dist**2 + (1 - similar) * np.maximum(margin - dist, 0.0) ** 2


def lifted_struct(labels, x, margin=1.0):
    """Oh Song et al. 2016, eq. 4: 1/(2|P|) sum over unordered positive pairs
    of max(J_ij, 0)², J_ij = log(sum_{N(i)} e^{m - D_ik} + sum_{N(j)} e^{m - D_jl}) + D_ij."""
    d = distance_matrix(x, "L2")
    n = len(labels)
    total, pairs = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            if labels[i] != labels[j]:
                continue
            pairs += 1
            s = sum(np.exp(margin - d[i, k]) for k in range(n) if labels[k] != labels[i])
            s += sum(np.exp(margin - d[j, k]) for k in range(n) if labels[k] != labels[j])
            if s == 0.0:
                continue  # no negatives at all: defined as 0 here (Addons: NaN)
            total += max(np.log(s) + d[i, j], 0.0) ** 2
    return total / (2 * pairs) if pairs else 0.0


def _row_cross_entropy(weights, logits):
    logits = np.asarray(logits, np.float64)
    total = 0.0
    for i in range(len(logits)):
        if weights[i].sum() == 0:
            continue
        target = weights[i] / weights[i].sum()
        log_softmax = logits[i] - np.log(np.sum(np.exp(logits[i])))
        total -= np.sum(target * log_softmax)
    return total / len(logits)


def npairs(labels, logits):
    """Sohn 2016: softmax cross-entropy of each anchor row against the
    positives sharing its label (uniform target)."""
    labels = np.asarray(labels)
    same = (labels[:, None] == labels[None, :]).astype(np.float64)
    return _row_cross_entropy(same, logits)


def npairs_multilabel(indicators, logits):
    """Target of row i proportional to the number of shared classes."""
    indicators = np.asarray(indicators, np.float64)
    n = len(indicators)
    shared = np.array(
        [[np.sum(np.minimum(indicators[i], indicators[j])) for j in range(n)] for i in range(n)]
    )
    return _row_cross_entropy(shared, logits)
