"""Verification on pairs ("same / not same"): ROC AUC, EER, TAR@FAR, thresholds.

Every function takes `same`, whether each pair shares a label (booleans, or
0/1 as integers or floats), and `scores`, one value per pair: a distance (smaller means "same") or,
with `similarity=True`, a similarity (larger means "same"). For values
computed with a tfmetric distance, pass `distance.to_closeness(values)` with
`similarity=True` (and map a threshold back with `distance.from_closeness`),
or use `evaluate_verification`, which computes the pair distances and the
direction itself. Curves come from scikit-learn's
`roc_curve`, with every threshold kept.

Reference:
    Huang, Ramesh, Berg, Learned-Miller. "Labeled Faces in the Wild: A
    Database for Studying Face Recognition in Unconstrained Environments".
    2007 (the pair-verification protocol).
"""

import numbers

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from tfmetric import distances as distances_lib
from tfmetric._src import inputs


def _prepare(same, scores, similarity):
    same = np.asarray(same)
    if same.dtype != bool and not (
        np.issubdtype(same.dtype, np.integer) or np.issubdtype(same.dtype, np.floating)
    ):
        raise TypeError(
            f"`same` must hold booleans or 0/1 numbers (integers or floats); got dtype "
            f"{same.dtype}."
        )
    if same.ndim != 1:
        raise ValueError(f"`same` must have shape (pairs,); got {same.shape}.")
    if same.dtype != bool:
        other = ~((same == 0) | (same == 1))
        if other.any():
            raise ValueError(
                f"`same` must hold only 0 and 1; got {int(other.sum())} other value(s), e.g. "
                f"{same[other][0].item()!r}."
            )
        same = same.astype(bool)
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.number) or scores.dtype == bool:
        raise TypeError(f"`scores` must hold numbers; got dtype {scores.dtype}.")
    if scores.shape != same.shape:
        raise ValueError(
            f"`scores` must have one value per pair, shape {same.shape}; got {scores.shape}."
        )
    scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("`scores` contains NaN or infinite values.")
    if same.all() or not same.any():
        raise ValueError("`same` must contain both same (1) and different (0) pairs.")
    if not isinstance(similarity, bool):
        raise TypeError(f"`similarity` must be a bool; got {similarity!r}.")
    # Oriented so that larger means "same".
    return same, (scores if similarity else -scores)


def _curve(same, oriented):
    fpr, tpr, thresholds = roc_curve(same, oriented, drop_intermediate=False)
    return fpr, tpr, thresholds


def roc_auc(same, scores, similarity=False):
    """Area under the ROC curve of the "same" decision.

    Args:
        same: Booleans (or 0/1), shape `(pairs,)`: whether each pair matches.
        scores: Distances (or similarities, see `similarity`), shape `(pairs,)`.
        similarity: `True` when larger scores mean "same". Defaults to `False`.

    Returns:
        A float in `[0, 1]`; tied scores count one half, as in scikit-learn.

    Example:

    >>> tfmetric.metrics.roc_auc([1, 1, 0, 0], [0.1, 0.5, 0.4, 0.9])
    0.75
    """
    same, oriented = _prepare(same, scores, similarity)
    return float(roc_auc_score(same, oriented))


def equal_error_rate(same, scores, similarity=False):
    """Equal error rate: where false accept and false reject rates meet.

    The ROC curve's points are joined by straight lines and the EER is read
    where the line crosses `FAR = FRR` (`FRR = 1 - TAR`).

    Args:
        same: Booleans (or 0/1), shape `(pairs,)`.
        scores: Distances (or similarities), shape `(pairs,)`.
        similarity: `True` when larger scores mean "same". Defaults to `False`.

    Returns:
        A float in `[0, 1]`.

    Example:

    >>> tfmetric.metrics.equal_error_rate([1, 1, 0, 0], [0.1, 0.5, 0.4, 0.9])
    0.5
    """
    same, oriented = _prepare(same, scores, similarity)
    fpr, tpr, _ = _curve(same, oriented)
    gap = (1.0 - tpr) - fpr  # FRR - FAR: 1 at the first point, -1 at the last
    i = int(np.argmax(gap <= 0.0))
    if gap[i] == 0.0:
        return float(fpr[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_far(far):
    """`far` as a float in `[0, 1]`: any real number (Python or numpy), not a bool."""
    if not _is_real(far) or not 0.0 <= float(far) <= 1.0:
        raise ValueError(f"`far` must be a real number in [0, 1]; got {far!r}.")
    return float(far)


def far_values(far):
    """The false accept rates of `far`: one real number or a sequence of them, as floats."""
    if _is_real(far) or isinstance(far, (str, bytes, bool, np.bool_)):
        return [_check_far(far)]
    try:
        values = list(far)
    except TypeError:
        raise ValueError(
            f"`far` must be a real number in [0, 1] or a sequence of them; got {far!r}."
        ) from None
    return [_check_far(value) for value in values]


def tar_at_far(same, scores, far=1e-3, similarity=False):
    """True accept rate at a false accept rate of at most `far`.

    The largest TAR among the thresholds whose FAR does not exceed `far` (no
    interpolation, so the result is achievable by a real threshold).

    Args:
        same: Booleans (or 0/1), shape `(pairs,)`.
        scores: Distances (or similarities), shape `(pairs,)`.
        far: The false accept rate, a real number (Python or numpy) in
            `[0, 1]`. Defaults to `1e-3`.
        similarity: `True` when larger scores mean "same". Defaults to `False`.

    Returns:
        A float in `[0, 1]`.

    Example:

    >>> tfmetric.metrics.tar_at_far([1, 1, 0, 0], [0.1, 0.5, 0.4, 0.9], far=0.0)
    0.5
    """
    far = _check_far(far)
    same, oriented = _prepare(same, scores, similarity)
    fpr, tpr, _ = _curve(same, oriented)
    return float(np.max(tpr[fpr <= far]))


def best_threshold(same, scores, metric="accuracy", similarity=False):
    """Calibrates the threshold of a "same / not same" decision.

    The decision is "same" when `score <= threshold` for distances (`>=` for
    similarities). Every observed score is a candidate, plus `-inf` (`+inf`
    for similarities): "never same". Among equally good thresholds the
    strictest (fewest "same" decisions) is returned.

    Args:
        same: Booleans (or 0/1), shape `(pairs,)`.
        scores: Distances (or similarities), shape `(pairs,)`.
        metric: `"accuracy"` or `"f1"`, the score to maximise. Defaults to
            `"accuracy"`.
        similarity: `True` when larger scores mean "same". Defaults to `False`.

    Returns:
        `(threshold, best_score)`, two floats.

    Example:

    >>> tfmetric.metrics.best_threshold([1, 1, 0, 0], [0.1, 0.3, 0.4, 0.9])
    (0.3, 1.0)
    """
    if metric not in ("accuracy", "f1"):
        raise ValueError(f"`metric` must be 'accuracy' or 'f1'; got {metric!r}.")
    same, oriented = _prepare(same, scores, similarity)
    fpr, tpr, thresholds = _curve(same, oriented)
    positives, negatives = int(same.sum()), int((~same).sum())
    tp = np.rint(tpr * positives)
    fp = np.rint(fpr * negatives)
    if metric == "accuracy":
        values = (tp + negatives - fp) / (positives + negatives)
    else:
        values = 2.0 * tp / (tp + fp + positives)
    best = int(np.argmax(values))
    threshold = float(thresholds[best])
    return (threshold if similarity else -threshold), float(values[best])


def paired_distances(x, y, distance="euclidean"):
    """Distances `distance(x[i], y[i])` between the rows of two arrays.

    Args:
        x: Embeddings, shape `(pairs, d)`.
        y: Embeddings, shape `(pairs, d)`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.

    Returns:
        A float32 numpy array of shape `(pairs,)` (similarities for a
        similarity).

    Example:

    >>> tfmetric.metrics.paired_distances([[0.0, 0.0], [1.0, 1.0]], [[3.0, 4.0], [1.0, 1.0]]).tolist()
    [5.0, 0.0]
    """
    distance = distances_lib.get(distance)
    x = inputs.check_embedding_array(x, "x")
    y = inputs.check_embedding_array(y, "y")
    inputs.check_same_dim(x, y, "x", "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` and `y` must hold as many rows; got {x.shape[0]} and {y.shape[0]}.")
    return np.asarray(distance.paired(x, y))


def evaluate_verification(x, y, same, distance="euclidean", far=(1e-3, 1e-2)):
    """All verification metrics of embedding pairs `(x[i], y[i])`.

    Args:
        x: Embeddings of the first elements, shape `(pairs, d)`.
        y: Embeddings of the second elements, shape `(pairs, d)`.
        same: Booleans (or 0/1), shape `(pairs,)`.
        distance: Name, config or `tfmetric.distances.Distance`; it sets the
            direction of the scores. Defaults to `"euclidean"`.
        far: False accept rates for `tar_at_far`: a real number in `[0, 1]`
            (Python or numpy) or a sequence of them. Defaults to `(1e-3, 1e-2)`.

    Returns:
        A dict: `roc_auc`, `equal_error_rate`, `tar_at_far_{far}` for each
        `far`, `threshold` and `accuracy` (from `best_threshold`).

    Example:

    >>> x = np.array([[0.0], [0.0], [0.0], [0.0]])
    >>> y = np.array([[0.1], [0.3], [0.4], [0.9]])
    >>> scores = tfmetric.metrics.evaluate_verification(x, y, [1, 1, 0, 0], far=(0.5,))
    >>> {name: round(value, 3) for name, value in scores.items()}
    {'roc_auc': 1.0, 'equal_error_rate': 0.0, 'tar_at_far_0.5': 1.0, 'threshold': 0.3, 'accuracy': 1.0}
    """
    distance = distances_lib.get(distance)
    far = far_values(far)
    # Closeness scores (larger means "same") serve distances and similarities alike.
    scores = distance.to_closeness(paired_distances(x, y, distance).astype(np.float64))
    results = {
        "roc_auc": roc_auc(same, scores, True),
        "equal_error_rate": equal_error_rate(same, scores, True),
    }
    for value in far:
        results[f"tar_at_far_{value:g}"] = tar_at_far(same, scores, value, True)
    threshold, accuracy = best_threshold(same, scores, "accuracy", True)
    results.update(threshold=float(distance.from_closeness(threshold)), accuracy=accuracy)
    return results
