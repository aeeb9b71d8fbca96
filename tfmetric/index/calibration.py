"""Calibrating a distance threshold on an index, then matching queries to a label or "unknown".

A query is matched to the label of its nearest indexed neighbour when that
neighbour is close enough (distance `<= threshold`, or similarity `>=
threshold`), and is "unknown" otherwise. Over labelled calibration queries,
at each threshold:

- true positive: matched, to the right label;
- false positive: matched, to a wrong label (including every match of a query
  whose class is not in the index);
- false negative: not matched, although the nearest neighbour has the right
  label;
- true negative: not matched, and the nearest neighbour has a wrong label;

precision = tp / (tp + fp), recall = tp / (tp + fn), F1 their harmonic mean
(0 where undefined). These are TensorFlow Similarity's definitions for
`calibrate` and `evaluate_classification`.
"""

import dataclasses
import numbers
import warnings

import numpy as np

from tfmetric import distances as distances_lib
from tfmetric._src import inputs, validation
from tfmetric.index.lookups import format_table

METRICS = ("precision", "recall", "f1")


@dataclasses.dataclass(frozen=True)
class CalibrationCurve:
    """Precision, recall and F1 at every candidate threshold, in increasing acceptance.

    Attributes:
        thresholds: Candidate thresholds (the distinct nearest-neighbour
            distances; decreasing similarities for a similarity).
        precision, recall, f1: The metrics at each threshold.
        true_positives, false_positives, false_negatives, true_negatives:
            The counts at each threshold.
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    false_negatives: np.ndarray
    true_negatives: np.ndarray


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Thresholds meeting targets, with the curve they were read from.

    Attributes:
        thresholds: `{metric: threshold}` for each target of `calibrate`.
        values: `{metric: {"precision": p, "recall": r, "f1": f}}`, the
            metrics at each of those thresholds.
        curve: The full `CalibrationCurve`.
        direction: The `tfmetric.distances.Direction` of the thresholds (the
            index's distance): `direction.within(value, threshold)` is a match.
    """

    thresholds: dict
    values: dict
    curve: CalibrationCurve
    direction: distances_lib.Direction = distances_lib.DISSIMILARITY

    @property
    def is_similarity(self):
        """Deprecated: whether thresholds are similarities; use `direction.kind`."""
        warnings.warn(
            "`Calibration.is_similarity` is deprecated: use `calibration.direction` "
            "(e.g. `direction.kind == 'similarity'`).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.direction.kind == "similarity"

    def __str__(self):
        rows = []
        for name, threshold in self.thresholds.items():
            v = self.values[name]
            rows.append([name, threshold, v["precision"], v["recall"], v["f1"]])
        return format_table(["target", "threshold", "precision", "recall", "f1"], rows)


def _counts(correct, oriented, cuts):
    """tp/fp/fn/tn when accepting `oriented <= cut`, for each cut."""
    order = np.argsort(oriented, kind="stable")
    sorted_d, sorted_ok = oriented[order], correct[order]
    accepted = np.searchsorted(sorted_d, cuts, side="right")
    tp_cum = np.concatenate([[0], np.cumsum(sorted_ok)])
    tp = tp_cum[accepted]
    fp = accepted - tp
    fn = int(correct.sum()) - tp
    tn = len(correct) - accepted - fn
    return tp, fp, fn, tn


def _rates(tp, fp, fn):
    tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return precision, recall, f1


def calibration_curve(nearest_labels, distances, labels, distance=None, *, is_similarity=None):
    """Precision / recall / F1 of nearest-neighbour matching at every threshold.

    Args:
        nearest_labels: Label of each query's nearest neighbour, shape `(q,)`.
        distances: Distance (or similarity) to that neighbour, shape `(q,)`.
        labels: True label of each query, shape `(q,)`.
        distance: What `distances` are values of: a distance name, config or
            `tfmetric.distances.Distance`, or a `tfmetric.distances.Direction`
            (`tfmetric.distances.SIMILARITY` when larger values are closer).
            Defaults to `None`: smaller values are closer.
        is_similarity: Deprecated (a `DeprecationWarning`): `True` is
            `distance=tfmetric.distances.SIMILARITY`.

    Returns:
        A `CalibrationCurve` (see the module docstring for the definitions).

    Example:

    >>> curve = tfmetric.index.calibration_curve(
    ...     nearest_labels=[1, 2, 3, 4], distances=[0.1, 0.2, 0.3, 0.4], labels=[1, 2, 0, 4])
    >>> curve.thresholds.tolist(), curve.precision.tolist()
    ([0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 0.6666666666666666, 0.75])
    """
    labels = inputs.check_label_array(labels, "labels", np.asarray(labels).reshape(-1).shape[0], "labels")
    nearest = inputs.check_label_array(nearest_labels, "nearest_labels", len(labels), "labels")
    scores = np.asarray(distances, np.float64).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(
            f"`distances` has {scores.shape[0]} values but `labels` has {labels.shape[0]}."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("`distances` contains NaN or infinite values.")
    direction = _direction(distance, is_similarity)
    oriented = direction.to_dissimilarity(scores)
    cuts = np.unique(oriented)
    tp, fp, fn, tn = _counts(nearest == labels, oriented, cuts)
    precision, recall, f1 = _rates(tp, fp, fn)
    return CalibrationCurve(
        thresholds=direction.to_dissimilarity(cuts),
        precision=precision,
        recall=recall,
        f1=f1,
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        true_negatives=tn,
    )


def _direction(distance, is_similarity):
    """The `Direction` of `calibration_curve`'s values, from `distance` or the deprecated flag."""
    if is_similarity is not None:
        warnings.warn(
            "`calibration_curve(is_similarity=...)` is deprecated: pass `distance=` (the index's "
            "distance, or tfmetric.distances.SIMILARITY).",
            DeprecationWarning,
            stacklevel=3,
        )
        if distance is not None:
            raise ValueError("Give `distance` only; `is_similarity` is deprecated.")
        if not isinstance(is_similarity, (bool, np.bool_)):
            raise TypeError(f"`is_similarity` must be a bool; got {is_similarity!r}.")
        return distances_lib.SIMILARITY if is_similarity else distances_lib.DISSIMILARITY
    if distance is None:
        return distances_lib.DISSIMILARITY
    return distances_lib.direction_of(distance) or distances_lib.get(distance)


def _choose(curve, metric, target):
    """Index into the curve of the threshold meeting `target` for `metric`."""
    values = getattr(curve, metric)
    if target == "optimal":
        # The first (strictest) threshold reaching the best value.
        return int(np.argmax(values))
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"targets[{metric!r}] must be in (0, 1] or 'optimal'; got {target!r}.")
    meets = np.flatnonzero(values >= target)
    if not len(meets):
        raise ValueError(
            f"No threshold reaches {metric} {target}; the best is {float(values.max()):.4f}."
        )
    # Precision: accept as much as possible while keeping it; recall and F1:
    # accept as little as needed to reach it.
    return int(meets[-1] if metric == "precision" else meets[0])


def _nearest(index, queries):
    if index.labels is None:
        raise ValueError("The index holds no labels: `add` embeddings with `labels` to calibrate.")
    result = index.lookup(queries, k=1)
    return result.labels[:, 0], result.distances[:, 0]


def calibrate(index, queries, labels, targets=None):
    """Distance thresholds at which nearest-neighbour matching meets precision/recall/F1 targets.

    The queries (labelled, ideally held out from the index, and including
    classes the index lacks if "unknown" matters) are looked up (`k=1`), and
    the curve of `calibration_curve` is read at each target: for precision,
    the loosest threshold keeping precision `>= target` (most queries
    matched); for recall and F1, the strictest threshold reaching it;
    `"optimal"` takes the strictest threshold with the best value.

    Args:
        index: A labelled `tfmetric.index` index.
        queries: Float array `(q, d)` of query embeddings.
        labels: Their true integer labels `(q,)`.
        targets: `{metric: target}` with metric `"precision"`, `"recall"`
            or `"f1"` and target in `(0, 1]` or `"optimal"`. Defaults to
            `{"f1": "optimal"}`.

    Returns:
        A `Calibration`: `thresholds[metric]`, the metrics there
        (`values`), and the `curve`. `print` shows the chosen thresholds.

    Raises:
        ValueError: for an unknown metric or a target that no threshold
            reaches (the message gives the best value reached).

    Example:

    >>> index = tfmetric.index.ExactIndex()
    >>> index.add([[0.0], [10.0]], labels=[0, 1])
    >>> queries, labels = [[0.5], [9.0], [3.0], [6.0]], [0, 1, 2, 1]
    >>> calibration = tfmetric.index.calibrate(index, queries, labels, {"precision": 1.0})
    >>> calibration.thresholds
    {'precision': 1.0}
    """
    targets = {"f1": "optimal"} if targets is None else dict(targets)
    unknown = sorted(set(targets) - set(METRICS))
    if unknown or not targets:
        raise ValueError(f"`targets` keys must be among {list(METRICS)}; got {sorted(targets)}.")
    nearest, distances = _nearest(index, queries)
    labels = inputs.check_label_array(labels, "labels", len(nearest), "queries")
    curve = calibration_curve(nearest, distances, labels, index.distance)
    thresholds, values = {}, {}
    for metric, target in targets.items():
        i = _choose(curve, metric, target)
        thresholds[metric] = float(curve.thresholds[i])
        values[metric] = {m: float(getattr(curve, m)[i]) for m in METRICS}
    return Calibration(thresholds, values, curve, index.distance)


def match(index, queries, threshold, unknown=-1):
    """The label of each query's nearest neighbour when close enough, else `unknown`.

    Args:
        index: A labelled index.
        queries: Float array `(q, d)`, or one query `(d,)`.
        threshold: A distance (match when `<=`), or a similarity for a
            similarity index (match when `>=`); e.g.
            `calibration.thresholds["precision"]`.
        unknown: The label returned for an unmatched query. Defaults to `-1`.

    Returns:
        Int64 labels of shape `(q,)`.

    Example:

    >>> index = tfmetric.index.ExactIndex()
    >>> index.add([[0.0], [10.0]], labels=[0, 1])
    >>> tfmetric.index.match(index, [[0.5], [9.0], [5.0]], threshold=1.0).tolist()
    [0, 1, -1]
    """
    threshold = validation.check_number(threshold, "threshold", allow_negative=True)
    if isinstance(unknown, bool) or not isinstance(unknown, numbers.Integral):
        raise ValueError(f"`unknown` must be an integer label; got {unknown!r}.")
    nearest, distances = _nearest(index, queries)
    close = index.distance.within(distances, threshold)
    return np.where(close, nearest, np.int64(unknown))


def evaluate_classification(index, queries, labels, threshold):
    """Precision, recall and F1 of `match` at `threshold` (definitions in the module docstring).

    Args:
        index: A labelled index.
        queries: Float array `(q, d)` of query embeddings.
        labels: Their true integer labels `(q,)`.
        threshold: The distance (or similarity) threshold.

    Returns:
        A dict with `precision`, `recall`, `f1`, `accuracy` (matched to the
        right label, over all queries) and the four counts.

    Example:

    >>> index = tfmetric.index.ExactIndex()
    >>> index.add([[0.0], [10.0]], labels=[0, 1])
    >>> result = tfmetric.index.evaluate_classification(
    ...     index, [[0.5], [9.0], [3.0], [6.0]], [0, 1, 2, 1], threshold=3.5)
    >>> result["precision"], result["recall"], result["true_negatives"]
    (0.6666666666666666, 0.6666666666666666, 0)
    """
    threshold = validation.check_number(threshold, "threshold", allow_negative=True)
    nearest, distances = _nearest(index, queries)
    labels = inputs.check_label_array(labels, "labels", len(nearest), "queries")
    scores = np.asarray(distances, np.float64)
    oriented = index.distance.to_dissimilarity(scores)
    cut = index.distance.to_dissimilarity(float(threshold))
    tp, fp, fn, tn = (int(c[0]) for c in _counts(nearest == labels, oriented, np.array([cut])))
    precision, recall, f1 = (float(v[0]) for v in _rates([tp], [fp], [fn]))
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": tp / len(labels),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "true_negatives": tn,
    }


def plot_calibration(calibration, ax=None):
    """Plots precision, recall and F1 against the threshold, marking the chosen thresholds.

    Args:
        calibration: A `Calibration` from `calibrate`.
        ax: A matplotlib `Axes`. Defaults to `None` (a new figure).

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    curve = calibration.curve
    for metric in METRICS:
        ax.plot(curve.thresholds, getattr(curve, metric), label=metric)
    for metric, threshold in calibration.thresholds.items():
        ax.axvline(threshold, linestyle="--", color="gray")
        ax.annotate(metric, (threshold, 0.02), rotation=90, fontsize=8)
    ax.set_xlabel(f"{calibration.direction.kind} threshold")
    ax.set_ylim(0.0, 1.05)
    ax.legend()
    return ax.figure
