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
from tfmetric.index import ExactIndex

RETRIEVAL_KEYS = ("precision_at_1", "map_at_r", "r_precision")
VERIFICATION_KEYS = ("roc_auc", "eer")
_CHUNK = 1024
_FULL_MATRIX = 4096


def _dissimilarity(distance, queries, references):
    return distance.to_dissimilarity(np.asarray(distance(queries, references), np.float64))


def nearest_neighbors(embeddings, k, distance="euclidean"):
    """Indices `(N, k)` of each sample's k nearest other samples, closest first.

    Exact search of `tfmetric.index.ExactIndex` for `k + 1` neighbours, the
    sample itself then dropped (or the farthest one, where duplicates of the
    sample fill the `k + 1`).
    """
    x = np.asarray(embeddings, np.float32)
    k = max(0, min(k, len(x) - 1))
    if k == 0:
        return np.zeros((len(x), 0), np.int64)
    index = ExactIndex(distance)
    index.add(x)
    ids, _, _ = index.search(x, k + 1)
    own = ids == np.arange(len(x))[:, None]
    others_first = np.argsort(own, axis=1, kind="stable")
    return np.take_along_axis(ids, others_first, axis=1)[:, :k].astype(np.int64)


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


PAIR_KEYS = ("pair_roc_auc", "pair_eer", "tar_at_far_1e-3", "pair_accuracy")
FEW_SHOT_KEYS = ("5_way_1_shot", "5_way_5_shot")
HELD_OUT_PAIRS = 10_000
FEW_SHOT_EPISODES = 1000


def sample_pairs(labels, count=HELD_OUT_PAIRS, seed=0):
    """`count` seeded pairs `(i, j)`, `i != j`, half of the same class and half of different ones.

    Positives are drawn among the classes with at least two samples, each
    class as often as its share of those samples; negatives are two uniform
    samples of different classes.

    Returns:
        `(i, j, same)` arrays, `same` boolean.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    members = {c: np.flatnonzero(labels == c) for c in classes[counts >= 2]}
    if not members or len(classes) < 2:
        raise ValueError("Pair verification needs 2 classes and a class with 2 samples.")
    positives = count // 2
    eligible = np.concatenate(list(members.values()))
    anchors = rng.choice(eligible, positives)
    partners = np.empty(positives, np.int64)
    for k, a in enumerate(anchors):
        pool = members[labels[a]]
        partner = pool[rng.integers(len(pool) - 1)]
        partners[k] = partner if partner != a else pool[-1]
    negatives = count - positives
    first = rng.integers(len(labels), size=negatives)
    second = rng.integers(len(labels), size=negatives)
    clash = labels[first] == labels[second]
    while np.any(clash):
        second[clash] = rng.integers(len(labels), size=int(clash.sum()))
        clash = labels[first] == labels[second]
    i = np.concatenate([anchors, first])
    j = np.concatenate([partners, second])
    same = np.concatenate([np.ones(positives, bool), np.zeros(negatives, bool)])
    return i, j, same


def pair_verification(scores, same, similarity, folds=2, seed=0):
    """Verification of held-out pairs: ROC AUC, EER, TAR@FAR=1e-3 and a calibrated threshold.

    The accuracy of the "same / not same" decision is cross-validated as in the
    LFW protocol: the pairs are split into `folds` seeded folds (each with its
    share of same and different pairs); each fold is
    decided at the threshold of best accuracy on the other folds. `threshold`
    is the one calibrated on all the pairs (what a deployment would use).

    Args:
        scores: One score per held-out pair (a distance, or a similarity).
        same: Whether each pair shares a class.
        similarity: `True` when larger scores mean "same".
        folds: Folds of the accuracy's cross-validation.
        seed: Seed of the fold split.

    Returns:
        `pair_roc_auc`, `pair_eer`, `tar_at_far_1e-3`, `threshold`,
        `pair_accuracy` (cross-validated) and `pairs`.
    """
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    if not np.all(np.isfinite(scores)):
        raise ValueError("The held-out pair scores hold NaN or Inf: training diverged.")
    # Folds stratified by "same", so that every fold's complement holds both kinds of pairs.
    rng = np.random.default_rng(seed)
    fold = np.empty(len(scores), np.int64)
    for kind in (same, ~same):
        fold[kind] = rng.permutation(int(kind.sum())) % folds
    correct = 0
    for k in range(folds):
        rest = fold != k
        threshold, _ = metrics.best_threshold(same[rest], scores[rest], similarity=similarity)
        held = ~rest
        decided = scores[held] >= threshold if similarity else scores[held] <= threshold
        correct += int(np.sum(decided == same[held]))
    threshold, _ = metrics.best_threshold(same, scores, similarity=similarity)
    return {
        "pair_roc_auc": metrics.roc_auc(same, scores, similarity=similarity),
        "pair_eer": metrics.equal_error_rate(same, scores, similarity=similarity),
        "tar_at_far_1e-3": metrics.tar_at_far(same, scores, 1e-3, similarity=similarity),
        "threshold": float(threshold),
        "pair_accuracy": correct / len(scores),
        "pairs": int(len(scores)),
    }


def few_shot(embeddings, labels, distance="euclidean", episodes=FEW_SHOT_EPISODES, seed=0):
    """5-way 1-shot and 5-shot accuracy (`tfmetric.metrics.n_way_k_shot_accuracy`).

    With fewer than 5 classes holding `k + 1` samples, that entry is `None`.
    """
    labels = np.asarray(labels)
    out = {}
    for k, key in zip((1, 5), FEW_SHOT_KEYS, strict=True):
        try:
            accuracy, _ = metrics.n_way_k_shot_accuracy(
                embeddings, labels, n_way=5, k_shot=k, episodes=episodes, seed=seed,
                distance=distance,
            )  # fmt: skip
        except ValueError:
            accuracy = None
        out[key] = accuracy
    return out
