"""Contrastive loss of labelled pairs, for `SiameseModel`.

In-batch losses (`tfmetric.losses.TripletLoss`, ...) mine pairs inside a
labelled batch; `pair_contrastive_loss(labels, distances)` takes pairs that
the data pipeline already formed (`tfmetric.data.pair_dataset`): one value per
pair from a binary "same" label (1 = similar) and the pair's distance.
`paired_distance(distance, x, y)` computes that distance between the rows
`x[i]` and `y[i]` (`Distance.paired`).
"""

import keras
import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import inputs, reduction, validation
from tfmetric._src.autograph import as_written
from tfmetric.losses.scheduled import ScheduledArguments, margin_value

__all__ = ["PairContrastiveLoss", "pair_contrastive_loss", "paired_distance"]


@as_written
def paired_distance(distance, x, y):
    """Distance between matching rows, `d(x[i], y[i])`, shape `(B,)`.

    The row-wise form of the distance (`Distance.paired`): built-in
    distances are computed from the difference `x - y` (exact even for nearly
    equal rows, O(B * D) memory). Values are float32 and oriented as the distance defines them: a
    similarity such as `"inner_product"` stays a similarity.

    Args:
        distance: Name, config or `tfmetric.distances.Distance`.
        x: Embeddings of shape `(B, D)`.
        y: Embeddings of shape `(B, D)`.

    Returns:
        A float32 tensor of shape `(B,)`.

    Example:

    >>> x = np.array([[0.0, 0.0], [1.0, 1.0]])
    >>> y = np.array([[3.0, 4.0], [1.0, 1.0]])
    >>> np.asarray(tfmetric.losses.paired_distance("euclidean", x, y)).tolist()
    [5.0, 0.0]
    """
    return distances_lib.get(distance).paired(x, y)


def _check_binary_labels(labels, size, name="y_true", size_name="y_pred"):
    labels = ops.convert_to_tensor(labels)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if dtype == "string" or dtype.startswith("complex"):
        raise ValueError(f"`{name}` must hold 0/1 pair labels; got dtype {dtype}.")
    if getattr(labels.shape, "rank", 0) is None:
        # Unknown rank (a `tf.data` pipeline without static shapes): one label per pair.
        labels = ops.reshape(labels, (-1,) if size is None else (size,))
    if len(labels.shape) == 2 and labels.shape[1] == 1:
        labels = ops.reshape(labels, (-1,))
    if len(labels.shape) != 1:
        raise ValueError(
            f"`{name}` must be pair labels of shape (batch,) or (batch, 1); got {tuple(labels.shape)}."
        )
    if labels.shape[0] is not None and size is not None and labels.shape[0] != size:
        raise ValueError(
            f"`{name}` has {labels.shape[0]} labels but `{size_name}` has {size} distances."
        )
    values = inputs.static_value(labels)
    if values is not None and values.size:
        values = values.astype(np.float64)
        if not np.all((values >= 0.0) & (values <= 1.0)):
            bad = values[~((values >= 0.0) & (values <= 1.0))].flat[0]
            raise ValueError(
                f"`{name}` must hold pair labels 1 (similar) / 0 (dissimilar), or soft labels "
                f"in [0, 1]; got {float(bad)!r}."
            )
    return ops.cast(labels, "float32")


def _as_pair_values(values, name="y_pred"):
    values = ops.convert_to_tensor(values)
    dtype = keras.backend.standardize_dtype(values.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(f"`{name}` must be floating-point distances; got dtype {dtype}.")
    if len(values.shape) == 2 and values.shape[1] == 1:
        values = ops.reshape(values, (-1,))
    if len(values.shape) != 1:
        raise ValueError(
            f"`{name}` must be pair distances of shape (batch,) or (batch, 1); got "
            f"{tuple(values.shape)}."
        )
    if values.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (batch size 0); it needs pairs.")
    known = inputs.static_value(values)
    if known is not None and not np.all(np.isfinite(known)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return ops.cast(values, "float32")


@as_written
def pair_contrastive_loss(labels, distances, margin=1.0):
    """Contrastive loss of labelled pairs: `y d² + (1 - y) max(margin - d, 0)²`.

    **Label convention: `1` means similar (same class), `0` dissimilar.** A
    similar pair is pulled together (`d²`), a dissimilar one pushed beyond the
    margin. This is the convention of Hadsell et al. 2006 and of
    `tfmetric.data.pair_dataset`; some code (e.g. the Keras Siamese example,
    keras-team/keras#16935) uses the opposite one — flip such labels with
    `1 - y` first. Soft labels in `[0, 1]` interpolate the two terms. The
    paper's factor 1/2 is left out, as in TensorFlow Addons.

    Args:
        labels: Pair labels, shape `(B,)` or `(B, 1)`: 1 = similar, 0 =
            dissimilar (soft labels in `[0, 1]` allowed; others are an error
            where values are known).
        distances: Pair distances (smaller = closer), shape `(B,)` or
            `(B, 1)`, e.g. the output of `tfmetric.models.SiameseModel`.
        margin: Non-negative margin for dissimilar pairs. Defaults to `1.0`.

    Returns:
        Per-pair float32 values of shape `(B,)`.

    Example:

    >>> labels = np.array([1, 0, 0])
    >>> distances = np.array([0.5, 0.25, 2.0])
    >>> np.asarray(tfmetric.losses.pair_contrastive_loss(labels, distances)).tolist()
    [0.25, 0.5625, 0.0]

    Reference:
        Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an
        Invariant Mapping", CVPR 2006.
    """
    margin = margin_value(margin, maximum=validation.SQUARE_MAX)
    distances = _as_pair_values(distances, "distances")
    labels = _check_binary_labels(labels, distances.shape[0], "labels", "distances")
    pull = ops.square(distances)
    push = ops.square(ops.relu(margin - distances))
    return labels * pull + (1.0 - labels) * push


@keras.saving.register_keras_serializable(package="tfmetric")
class PairContrastiveLoss(ScheduledArguments, keras.losses.Loss):
    """Contrastive loss of labelled pairs; **label 1 = similar, 0 = dissimilar**.

    See `tfmetric.losses.pair_contrastive_loss`. `y_true` holds the pair labels
    and `y_pred` the pair distances, e.g. from a `tfmetric.models.SiameseModel`
    without a head fed by `tfmetric.data.pair_dataset`. For labels with the
    opposite convention, pass `1 - y`.

    Args:
        margin: Non-negative margin for dissimilar pairs. Defaults to `1.0`.
        reduction: Keras reduction of the per-pair values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"pair_contrastive_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).

    Example:

    >>> loss = tfmetric.losses.PairContrastiveLoss(margin=1.0)
    >>> round(float(loss(np.array([1.0, 0.0]), np.array([0.5, 0.25]))), 4)
    0.4062

    Reference:
        Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an
        Invariant Mapping", CVPR 2006.
    """

    def __init__(
        self, margin=1.0, reduction="sum_over_batch_size", name="pair_contrastive_loss", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = validation.check_number(margin, "margin", maximum=validation.SQUARE_MAX)

    @as_written
    def __call__(self, y_true, y_pred, sample_weight=None):
        y_pred = _as_pair_values(y_pred)
        y_true = _check_binary_labels(y_true, y_pred.shape[0])
        if sample_weight is not None:
            sample_weight = reduction.sample_weights(sample_weight, ops.shape(y_pred)[0])
        return super().__call__(y_true, y_pred, sample_weight)

    def call(self, y_true, y_pred):
        return pair_contrastive_loss(y_true, y_pred, margin=self.current_margin())

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, dtype=self._dtype_policy.name)
        return config
