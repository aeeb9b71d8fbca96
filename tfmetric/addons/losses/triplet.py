"""Triplet losses with TensorFlow Addons' semi-hard and hard mining."""

from keras import ops

from tfmetric._src import inputs, reduction, triplet_mining
from tfmetric._src.autograph import as_written
from tfmetric.addons.losses import _common
from tfmetric.losses import batch


def _semihard_values(labels, embeddings, margin, distance_metric):
    """Per-anchor values whose mean is Addons' semi-hard loss; O(B²) memory."""
    margin = _common.margin_value(margin)
    labels, embeddings = batch.prepare_labels_and_embeddings(
        labels, embeddings, batch.LOSS_INPUT_NAMES
    )
    dist = _common.distance_matrix(embeddings, distance_metric)
    positive, negative = inputs.label_masks(labels)
    value, _, _ = triplet_mining.loop_mining(dist, labels, margin, False, semi_hard=True)
    # Only in a one-class batch does an anchor lack negatives; Addons then uses
    # the row minimum of the distance matrix as the negative distance.
    has_negative = ops.any(negative, axis=1, keepdims=True)
    lone = ops.logical_and(positive, ops.logical_not(has_negative))
    row_min = ops.min(dist, axis=1, keepdims=True)
    value = value + ops.sum(ops.where(lone, ops.relu(margin + dist - row_min), 0.0), axis=1)
    return reduction.mean_form(value, ops.sum(ops.cast(positive, "float32")))


def _hard_values(labels, embeddings, margin, soft, distance_metric):
    """Per-anchor values whose mean is Addons' batch-hard loss."""
    margin = _common.margin_value(margin)
    labels, embeddings = batch.prepare_labels_and_embeddings(
        labels, embeddings, batch.LOSS_INPUT_NAMES
    )
    dist = _common.distance_matrix(embeddings, distance_metric)
    positive, negative = inputs.label_masks(labels)
    # Addons' masked max/min fall back to the row min/max over all columns
    # (diagonal included) for anchors without positives/negatives.
    hardest_positive = ops.where(
        ops.any(positive, axis=1),
        ops.max(ops.where(positive, dist, -float("inf")), axis=1),
        ops.min(dist, axis=1),
    )
    hardest_negative = ops.where(
        ops.any(negative, axis=1),
        ops.min(ops.where(negative, dist, float("inf")), axis=1),
        ops.max(dist, axis=1),
    )
    gap = hardest_positive - hardest_negative
    return ops.softplus(gap) if soft else ops.relu(gap + margin)


@_common.registered("triplet_semihard_loss")
@as_written
def triplet_semihard_loss(y_true, y_pred, margin=1.0, distance_metric="L2"):
    """Triplet loss with semi-hard negative mining (TensorFlow Addons' rule).

    For every positive pair `(a, p)` (same label, `a != p`) the negative is
    the closest one farther from `a` than `p`; where none is, the farthest
    negative of `a`. The loss is the mean of `max(margin + d(a, p) - d(a, n),
    0)` over all positive pairs.

    Same values and gradients as `tfa.losses.triplet_semihard_loss`, with two
    deliberate differences: a batch without positive pairs gives 0 with a zero
    gradient (Addons: NaN), and memory is O(B²) forward and backward (Addons
    tiles the `(B, B)` matrix B times). In a one-class batch, as in Addons, the
    negative distance is the row minimum of the distance matrix. At exact ties
    the gradient goes to one of the tied negatives (Addons splits it).

    Args:
        y_true: Integer class labels, shape `(B,)` or `(B, 1)`.
        y_pred: Embeddings, shape `(B, D)`; computed in float32.
        margin: Non-negative margin: a number or a floating scalar tensor or
            variable (assigning to a variable changes the loss). Defaults to `1.0`.
        distance_metric: `"L2"` (euclidean), `"squared-L2"`, `"angular"`
            (`1 - cos`), or a callable mapping the float32 embeddings to a
            `(B, B)` distance matrix. Defaults to `"L2"`.

    Returns:
        The scalar loss, with the floating dtype of `y_pred`.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> loss = tfmetric.addons.triplet_semihard_loss(labels, embeddings)
    >>> round(float(loss), 4)
    0.5

    Reference:
        Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015.
    """
    margin = _common.check_margin(margin)
    distance_metric = _common.check_distance_metric(distance_metric)
    y_pred = ops.convert_to_tensor(y_pred)
    values = _semihard_values(y_true, y_pred, margin, distance_metric)
    return _common.scalar_like(ops.mean(values), y_pred)


@_common.registered("triplet_hard_loss")
@as_written
def triplet_hard_loss(y_true, y_pred, margin=1.0, soft=False, distance_metric="L2"):
    """Triplet loss with batch-hard mining (TensorFlow Addons' rule).

    For every anchor, its farthest positive and closest negative give the term
    `max(d_ap - d_an + margin, 0)`, or `log(1 + exp(d_ap - d_an))` with
    `soft=True`; the loss is the mean over all anchors of the batch.

    Same values and gradients as `tfa.losses.triplet_hard_loss`, including its
    convention for anchors without a positive (or negative): the row minimum
    (or maximum) of the distance matrix, diagonal included, stands in — so such
    anchors still count (with `"L2"`, `max(margin - d_an, 0)`) and this loss is
    never NaN. The soft form uses a stable softplus (Addons' overflows to inf
    for gaps above ~88).

    Args:
        y_true: Integer class labels, shape `(B,)` or `(B, 1)`.
        y_pred: Embeddings, shape `(B, D)`; computed in float32.
        margin: Non-negative margin: a number or a floating scalar tensor or
            variable (assigning to a variable changes the loss). Defaults to `1.0`.
        soft: Use the soft-margin form (the margin is then unused). Defaults to
            `False`.
        distance_metric: `"L2"`, `"squared-L2"`, `"angular"` or a callable
            returning a `(B, B)` distance matrix. Defaults to `"L2"`.

    Returns:
        The scalar loss, with the floating dtype of `y_pred`.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> loss = tfmetric.addons.triplet_hard_loss(labels, embeddings)
    >>> round(float(loss), 4)
    1.125

    Reference:
        Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
        Re-Identification", 2017.
    """
    margin = _common.check_margin(margin)
    distance_metric = _common.check_distance_metric(distance_metric)
    y_pred = ops.convert_to_tensor(y_pred)
    values = _hard_values(y_true, y_pred, margin, bool(soft), distance_metric)
    return _common.scalar_like(ops.mean(values), y_pred)


class _TripletBase(_common.LabelLoss):
    def __init__(self, margin, distance_metric, name, kwargs):
        reduction, dtype = _common.split_loss_options(type(self).__name__, kwargs)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = _common.check_margin(margin)
        self.distance_metric = _common.check_distance_metric(
            _common.deserialize_distance_metric(distance_metric)
        )

    def get_config(self):
        config = super().get_config()
        config["margin"] = _common.margin_config(self.margin)
        config["distance_metric"] = _common.serialize_distance_metric(self.distance_metric)
        return config


@_common.registered("TripletSemiHardLoss")
class TripletSemiHardLoss(_TripletBase):
    """Triplet loss with semi-hard negative mining; drop-in for `tfa.losses.TripletSemiHardLoss`.

    See `tfmetric.addons.triplet_semihard_loss` for the definition and the
    differences from Addons (0 instead of NaN without positive pairs; O(B²)
    memory). Per-anchor values are returned to Keras so that `sample_weight`
    weights anchors; their mean is Addons' scalar.

    Args:
        margin: Non-negative margin: a number or a floating scalar tensor or
            variable (assigning to a variable changes the loss). Defaults to `1.0`.
        distance_metric: `"L2"`, `"squared-L2"`, `"angular"` or a callable
            returning a `(B, B)` distance matrix (register it with
            `keras.saving.register_keras_serializable` to save the loss).
            Defaults to `"L2"`.
        name: Name of the loss. Defaults to `None` (`"triplet_semi_hard_loss"`).
        **kwargs: Keras' `reduction` (defaults to `"sum_over_batch_size"`) and
            `dtype`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.addons.TripletSemiHardLoss())
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> round(float(tfmetric.addons.TripletSemiHardLoss()(labels, embeddings)), 4)
    0.5

    Reference:
        Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015.
    """

    def __init__(self, margin=1.0, distance_metric="L2", name=None, **kwargs):
        super().__init__(margin, distance_metric, name, kwargs)

    def per_sample(self, labels, y_pred):
        return _semihard_values(labels, y_pred, self.margin, self.distance_metric)


@_common.registered("TripletHardLoss")
class TripletHardLoss(_TripletBase):
    """Triplet loss with batch-hard mining; drop-in for `tfa.losses.TripletHardLoss`.

    See `tfmetric.addons.triplet_hard_loss` for the definition.

    Args:
        margin: Non-negative margin: a number or a floating scalar tensor or
            variable (assigning to a variable changes the loss). Defaults to `1.0`.
        soft: Use the soft-margin form. Defaults to `False`.
        distance_metric: `"L2"`, `"squared-L2"`, `"angular"` or a callable
            returning a `(B, B)` distance matrix. Defaults to `"L2"`.
        name: Name of the loss. Defaults to `None` (`"triplet_hard_loss"`).
        **kwargs: Keras' `reduction` (defaults to `"sum_over_batch_size"`) and
            `dtype`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.addons.TripletHardLoss(soft=True))
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> round(float(tfmetric.addons.TripletHardLoss()(labels, embeddings)), 4)
    1.125

    Reference:
        Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
        Re-Identification", 2017.
    """

    def __init__(self, margin=1.0, soft=False, distance_metric="L2", name=None, **kwargs):
        super().__init__(margin, distance_metric, name, kwargs)
        self.soft = bool(soft)

    def per_sample(self, labels, y_pred):
        return _hard_values(labels, y_pred, self.margin, self.soft, self.distance_metric)

    def get_config(self):
        config = super().get_config()
        config["soft"] = self.soft
        return config
