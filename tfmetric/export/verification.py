"""The `verify` signature: one score per pair of inputs and the decision at a calibrated threshold.

A `tfmetric.models.SiameseModel` is verified by the model itself (its pair
scorer, e.g. `tfmetric.layers.WeightedL1`, or its `distance`); any other embedder
by the export's distance between the two (exported) embeddings. The threshold
is calibrated on validation pairs with `tfmetric.metrics.best_threshold`
(maximum accuracy by default), then moved half-way to the next observed score,
so that no validation pair sits exactly on it.
"""

import numpy as np
import tensorflow as tf

from tfmetric import distances as distances_lib

__all__ = ["VerifyOptions", "VerifyPlan"]

_METRICS = ("accuracy", "f1")


class VerifyOptions:
    """How the `verify` signature decides.

    Args:
        threshold: The decision threshold on the score. Defaults to `None`:
            calibrated on the validation pairs.
        metric: What the calibration maximises: `"accuracy"` or `"f1"`.
            Defaults to `"accuracy"`.

    Example:

    >>> tfmetric.export.VerifyOptions(threshold=0.5)
    VerifyOptions(threshold=0.5, metric='accuracy')
    """

    def __init__(self, threshold=None, metric="accuracy"):
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
                raise TypeError(f"`threshold` must be a number or None; got {threshold!r}.")
            if not np.isfinite(threshold):
                raise ValueError(f"`threshold` must be finite; got {threshold!r}.")
            threshold = float(threshold)
        if metric not in _METRICS:
            raise ValueError(f"`metric` must be one of {list(_METRICS)}; got {metric!r}.")
        self.threshold = threshold
        self.metric = metric

    @classmethod
    def from_argument(cls, verify, siamese):
        """`None` (no `verify` signature) or options, from the `verify` argument."""
        if verify is None:
            return cls() if siamese else None
        if verify is False:
            return None
        if verify is True:
            return cls()
        if isinstance(verify, cls):
            return verify
        raise TypeError(
            f"`verify` must be None, a bool or a tfmetric.export.VerifyOptions; got {verify!r}."
        )

    def __repr__(self):
        return f"VerifyOptions(threshold={self.threshold!r}, metric={self.metric!r})"


def _as_float32_vector(values):
    return tf.reshape(tf.cast(values, tf.float32), [-1])


class VerifyPlan:
    """The resolved `verify` decision: the score, its direction, the threshold.

    Attributes:
        kind: `"siamese_scorer"`, `"siamese_distance"` or `"distance"`.
        score: Callable `(x1, x2) -> (batch,)` float32 scores, eager or traced.
        direction: The `tfmetric.distances.Direction` of the scores (a
            distance, or `tfmetric.distances.SIMILARITY`, ...).
        threshold: The decision threshold (a float).
        calibration: Dict describing how the threshold was chosen.
        siamese: The Siamese model (tracked by the SavedModel), or `None`.
    """

    def __init__(self, kind, score, direction, threshold, calibration, siamese=None):
        self.kind = kind
        self.score = score
        self.direction = direction
        self.threshold = threshold
        self.calibration = calibration
        self.siamese = siamese

    def decide(self, scores):
        """`is_match` for scores (numpy or tf): `>=` the threshold for similarities, else `<=`."""
        if isinstance(scores, np.ndarray):
            return self.direction.within(scores, np.float32(self.threshold))
        return self.direction.within(scores, tf.constant(self.threshold, tf.float32))

    def score_numpy(self, x1, x2, batch_size=256):
        """Scores of pairs in batches, as a float32 numpy array."""
        return np.concatenate(
            [
                np.asarray(self.score(x1[i : i + batch_size], x2[i : i + batch_size]))
                for i in range(0, len(x1), batch_size)
            ]
        ).astype("float32")

    def to_json(self):
        return {
            "kind": self.kind,
            "score": self.direction.kind,
            "is_match": self.direction.match_rule,
            "threshold": self.threshold,
            "calibration": self.calibration,
        }


def _direction(kind, model, distance, same, scores):
    """The `Direction` of the scores, and how it was decided."""
    if kind == "siamese_scorer":
        direction = distances_lib.direction_of(model.scorer)
        if direction is not None:
            return direction, "scorer"
        if same is None:
            raise ValueError(
                "The Siamese model's scorer does not say whether larger scores mean a match "
                "(it is no learned distance and has no boolean `is_similarity` attribute); give "
                "labelled `validation` data to find out."
            )
        from tfmetric.metrics import roc_auc

        larger_match = roc_auc(same, scores, similarity=True) >= 0.5
        return (
            distances_lib.SIMILARITY if larger_match else distances_lib.DISSIMILARITY
        ), "validation pairs"
    if kind == "siamese_distance":
        # The score is the model's own distance: the export's `distance` has no say in it.
        return distances_lib.get(model.distance), "model"
    return distance, "distance"


def _calibrate(same, scores, direction, metric):
    """The threshold of best `metric` on the validation pairs, in the scores' own direction."""
    from tfmetric.metrics import best_threshold

    closeness = direction.to_closeness(scores)
    threshold, value = best_threshold(same, closeness, metric, True)
    # Half-way to the next score on the "no match" side: same decisions on the
    # validation pairs, none of them on the threshold itself.
    beyond = closeness[closeness < threshold]
    if np.isfinite(threshold) and len(beyond):
        threshold = 0.5 * (threshold + float(beyond.max()))
    elif not np.isfinite(threshold):
        # "Never a match" was best: just past the closest score.
        edge = float(closeness.max())
        threshold = edge + max(abs(edge), 1.0) * 1e-3
    return float(direction.from_closeness(threshold)), float(value)


def plan_verify(options, model, siamese, embed, distance, pairs):
    """Builds the `VerifyPlan` (calibrating the threshold) or raises a clear error.

    Args:
        options: `VerifyOptions`.
        model: The model given to the export.
        siamese: Whether `model` is a `tfmetric.models.SiameseModel`.
        embed: Callable mapping inputs to the exported embeddings.
        distance: The export's distance (for non-Siamese models).
        pairs: `(x1, x2, same)` validation pairs, or `None`.
    """
    if siamese:
        kind = "siamese_distance" if model.scorer is None else "siamese_scorer"

        def score(x1, x2):
            return _as_float32_vector(model([x1, x2], training=False))

    else:
        kind = "distance"

        def score(x1, x2):
            return _as_float32_vector(distance.paired(embed(x1), embed(x2)))

    same = scores = None
    if pairs is not None:
        x1, x2, same = pairs
        if same.all() or not same.any():
            raise ValueError(
                "The `verify` threshold needs validation pairs that match and pairs that do "
                "not; the `validation` data gives only one kind."
            )
        plan = VerifyPlan(kind, score, None, None, None)
        scores = plan.score_numpy(x1, x2)
        if not np.all(np.isfinite(scores)):
            raise ValueError("The model's `verify` scores of the validation pairs hold NaN or Inf.")
    direction, direction_source = _direction(kind, model, distance, same, scores)
    if options.threshold is not None:
        threshold = options.threshold
        calibration = {"source": "given"}
        if same is not None:
            decisions = direction.within(scores, threshold)
            calibration["accuracy"] = float(np.mean(decisions == same))
    elif pairs is None:
        raise ValueError(
            "The `verify` signature needs a threshold: give labelled `validation` data (or "
            "validation pairs) to calibrate it, or `verify=VerifyOptions(threshold=...)`."
        )
    else:
        threshold, value = _calibrate(same, scores, direction, options.metric)
        calibration = {
            "source": "validation pairs",
            "pairs": int(len(same)),
            "matching_pairs": int(same.sum()),
            "metric": options.metric,
            options.metric: value,
        }
    calibration["direction_from"] = direction_source
    return VerifyPlan(kind, score, direction, threshold, calibration, model if siamese else None)
