"""Triplet margin loss of formed triplets, for `TripletModel`.

In-batch losses (`tfmetric.losses.TripletLoss`, ...) mine triplets inside a
labelled batch; `triplet_margin_loss(embeddings)` takes `(anchor, positive,
negative)` triplets that the data pipeline already formed
(`tfmetric.data.triplet_dataset`), stacked as `(B, 3, D)`: one value each.
"""

import keras
import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import inputs, reduction, validation
from tfmetric._src.autograph import as_written
from tfmetric.losses.scheduled import ScheduledArguments, margin_value

__all__ = ["TripletMarginLoss", "triplet_margin_loss"]


def _split_triplets(embeddings):
    embeddings = ops.convert_to_tensor(embeddings)
    if len(embeddings.shape) != 3 or embeddings.shape[1] != 3:
        raise ValueError(
            "`y_pred` must be stacked triplet embeddings of shape (batch, 3, dim) "
            "(anchor, positive, negative), as `tfmetric.models.TripletModel` outputs; "
            f"got shape {tuple(embeddings.shape)}."
        )
    dtype = keras.backend.standardize_dtype(embeddings.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(f"`y_pred` must be floating-point embeddings; got dtype {dtype}.")
    if embeddings.shape[0] == 0:
        raise ValueError("`y_pred` is empty (batch size 0); it needs triplets.")
    if embeddings.shape[2] == 0:
        raise ValueError(
            f"`y_pred` must have at least one feature; got shape {tuple(embeddings.shape)}."
        )
    values = inputs.static_value(embeddings)
    if values is not None and not np.all(np.isfinite(values)):
        raise ValueError("`y_pred` contains NaN or infinite values.")
    embeddings = ops.cast(embeddings, "float32")
    return embeddings[:, 0], embeddings[:, 1], embeddings[:, 2]


@as_written
def triplet_margin_loss(embeddings, margin=1.0, distance="euclidean", squared=False):
    """Triplet margin loss on explicit triplets: `max(d(a, p) - d(a, n) + margin, 0)`.

    The triplets were formed beforehand (e.g. by `tfmetric.data.triplet_dataset`,
    randomly or by offline mining); for triplets mined inside a labelled batch use
    `tfmetric.losses.TripletLoss`. For a similarity such as `"inner_product"`,
    `d = -s`. Any Minkowski order is allowed through
    `distance=tfmetric.distances.Minkowski(p)`.

    Args:
        embeddings: Stacked `(anchor, positive, negative)` embeddings of shape
            `(B, 3, D)`; computed in float32.
        margin: Non-negative margin. Defaults to `1.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        squared: Square the distances before taking the difference (FaceNet's
            form with the euclidean distance). Defaults to `False`.

    Returns:
        Per-triplet float32 values of shape `(B,)`.

    Example:

    >>> triplets = np.array([[[0.0, 0.0], [0.0, 1.0], [0.0, 1.5]]])
    >>> np.asarray(tfmetric.losses.triplet_margin_loss(triplets, margin=1.0)).tolist()
    [0.5]

    Reference:
        Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015; Balntas et al., "Learning local feature
        descriptors with triplets and shallow convolutional neural networks",
        BMVC 2016.
    """
    margin = margin_value(margin)
    squared = validation.check_bool(squared, "squared")
    distance = distances_lib.get(distance)
    anchor, positive, negative = _split_triplets(embeddings)
    d_ap = distance.paired(anchor, positive)
    d_an = distance.paired(anchor, negative)
    d_ap, d_an = distance.to_dissimilarity(d_ap), distance.to_dissimilarity(d_an)
    if squared:
        d_ap, d_an = ops.square(d_ap), ops.square(d_an)
    return ops.relu(d_ap - d_an + margin)


@keras.saving.register_keras_serializable(package="tfmetric")
class TripletMarginLoss(ScheduledArguments, keras.losses.Loss):
    """Triplet margin loss on explicit `(anchor, positive, negative)` triplets.

    See `tfmetric.losses.triplet_margin_loss`. `y_pred` holds the stacked
    embeddings `(B, 3, D)` that `tfmetric.models.TripletModel` outputs;
    `y_true` is ignored (the triplets are explicit), so any labels — such as
    the `(B, 3)` class labels `tfmetric.data.triplet_dataset` yields — or
    `None` may be passed.

    Args:
        margin: Non-negative margin. Defaults to `1.0`.
        distance: Name, config or `tfmetric.distances.Distance` (e.g.
            `tfmetric.distances.Minkowski(p=3)`). Defaults to `"euclidean"`.
        squared: Square the distances before the difference. Defaults to
            `False`.
        reduction: Keras reduction of the per-triplet values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"triplet_margin_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).

    Example:

    >>> loss = tfmetric.losses.TripletMarginLoss(margin=0.5)
    >>> triplets = np.array([[[0.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])
    >>> float(loss(None, triplets))
    0.0

    Reference:
        Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015.
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        squared=False,
        reduction="sum_over_batch_size",
        name="triplet_margin_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = validation.check_number(margin, "margin")
        self.distance = distances_lib.get(distance)
        self.squared = validation.check_bool(squared, "squared")

    @as_written
    def __call__(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        _split_triplets(y_pred)
        if sample_weight is not None:
            sample_weight = reduction.sample_weights(sample_weight, ops.shape(y_pred)[0])
        # The triplets are explicit: labels only need the batch size for reduction.
        return super().__call__(ops.zeros((ops.shape(y_pred)[0],)), y_pred, sample_weight)

    def call(self, y_true, y_pred):
        return triplet_margin_loss(
            y_pred, margin=self.current_margin(), distance=self.distance, squared=self.squared
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            margin=self.margin,
            distance=distances_lib.serialize(self.distance),
            squared=self.squared,
            dtype=self._dtype_policy.name,
        )
        return config
