"""N-pair losses on an anchor × positive similarity matrix (TensorFlow Addons' form)."""

import tensorflow as tf
from keras import ops

from tfmetric._src import inputs
from tfmetric._src.autograph import as_written
from tfmetric.addons.losses import _common


def _logits(y_pred):
    y_pred = ops.convert_to_tensor(y_pred)
    if len(y_pred.shape) != 2:
        raise ValueError(
            "`y_pred` must be a 2-D (anchors, positives) similarity matrix; got shape "
            f"{tuple(y_pred.shape)}."
        )
    return y_pred, ops.cast(y_pred, "float32")


def _soft_cross_entropy(target, logits):
    """Row-wise cross-entropy with row-normalised `target`; rows summing to 0 give 0."""
    total = ops.sum(target, axis=1, keepdims=True)
    target = target / ops.where(total > 0.0, total, 1.0)
    return -ops.sum(target * ops.log_softmax(logits, axis=1), axis=1)


def _npairs_values(labels, logits):
    labels = inputs.check_labels(labels, "y_true")
    size, shape = labels.shape[0], tuple(logits.shape)
    if size is not None and None not in shape and shape != (size, size):
        raise ValueError(
            f"`y_pred` must be a ({size}, {size}) similarity matrix for {size} labels; "
            f"got shape {shape}."
        )
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    return _soft_cross_entropy(ops.cast(same, "float32"), logits)


def _multilabel_values(labels, logits):
    if isinstance(labels, tf.SparseTensor):
        labels = tf.sparse.to_dense(labels)
    indicators = ops.cast(ops.convert_to_tensor(labels), "float32")
    if len(indicators.shape) != 2:
        raise ValueError(
            "`y_true` must be (batch, num_classes) binary indicators; got shape "
            f"{tuple(indicators.shape)}."
        )
    shared = ops.matmul(indicators, ops.transpose(indicators))
    return _soft_cross_entropy(shared, logits)


@_common.registered("npairs_loss")
@as_written
def npairs_loss(y_true, y_pred):
    """N-pair loss: softmax cross-entropy of each anchor's similarity row.

    `y_pred[i, j]` is the similarity of anchor `i` and positive `j` (e.g.
    `anchors @ positives.T`); the target of row `i` is uniform over the
    columns `j` whose label equals `y_true[i]` (so the diagonal, i's own
    positive, always counts). The loss is the mean over rows. Same values and
    gradients as `tfa.losses.npairs_loss`; computed in float32, returned in
    the floating dtype of `y_pred`. Labels are compared exactly (Addons
    compares them after a cast to the logits' dtype).

    Args:
        y_true: Labels of the anchor/positive pairs, shape `(B,)` or `(B, 1)`.
        y_pred: Similarity matrix, shape `(B, B)`.

    Returns:
        The scalar loss.

    Example:

    >>> logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> round(float(tfmetric.addons.npairs_loss([0, 1], logits)), 4)
    0.1269

    Reference:
        Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
        Objective", NeurIPS 2016.
    """
    y_pred, logits = _logits(y_pred)
    return _common.scalar_like(ops.mean(_npairs_values(y_true, logits)), y_pred)


@_common.registered("npairs_multilabel_loss")
@as_written
def npairs_multilabel_loss(y_true, y_pred):
    """N-pair loss with multi-label targets.

    The target of row `i` is proportional to the number of classes anchor `i`
    shares with positive `j`, `(Y Yᵀ)[i, j]` for binary indicators `Y` of
    shape `(B, num_classes)` (dense or `tf.SparseTensor`). Same values and
    gradients as `tfa.losses.npairs_multilabel_loss`, except that a row without
    any class contributes 0 (Addons: NaN).

    Args:
        y_true: Binary class indicators, shape `(B, num_classes)`.
        y_pred: Similarity matrix, shape `(B, B)`.

    Returns:
        The scalar loss.

    Example:

    >>> logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> round(float(tfmetric.addons.npairs_multilabel_loss([[1, 0], [1, 1]], logits)), 4)
    0.9603

    Reference:
        Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
        Objective", NeurIPS 2016.
    """
    y_pred, logits = _logits(y_pred)
    return _common.scalar_like(ops.mean(_multilabel_values(y_true, logits)), y_pred)


@_common.registered("NpairsLoss")
class NpairsLoss(_common.LabelLoss):
    """N-pair loss; drop-in for `tfa.losses.NpairsLoss`.

    `y_true` holds integer labels `(B,)` and `y_pred` the anchor × positive
    similarity matrix `(B, B)`; see `tfmetric.addons.npairs_loss`. The
    per-anchor cross-entropies go to Keras, whose default reduction averages
    them as Addons does.

    Args:
        name: Name of the loss. Defaults to `"npairs_loss"`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        dtype: Dtype of the loss computation. Defaults to `None` (float32).

    Example:

    >>> loss = tfmetric.addons.NpairsLoss()
    >>> round(float(loss(np.array([0, 1]), np.array([[2.0, 0.0], [0.0, 2.0]]))), 4)
    0.1269

    Reference:
        Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
        Objective", NeurIPS 2016.
    """

    def __init__(self, name="npairs_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def per_sample(self, labels, y_pred):
        return _npairs_values(labels, ops.cast(y_pred, "float32"))


@_common.registered("NpairsMultilabelLoss")
class NpairsMultilabelLoss(_common.AddonsLoss):
    """Multi-label N-pair loss; drop-in for `tfa.losses.NpairsMultilabelLoss`.

    See `tfmetric.addons.npairs_multilabel_loss`.

    Args:
        name: Name of the loss. Defaults to `"npairs_multilabel_loss"`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        dtype: Dtype of the loss computation. Defaults to `None` (float32).

    Example:

    >>> loss = tfmetric.addons.NpairsMultilabelLoss()
    >>> round(float(loss(np.array([[1, 0], [0, 1]]), np.array([[2.0, 0.0], [0.0, 2.0]]))), 4)
    0.1269

    Reference:
        Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
        Objective", NeurIPS 2016.
    """

    def __init__(self, name="npairs_multilabel_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    @as_written
    def __call__(self, y_true, y_pred, sample_weight=None):
        if isinstance(y_true, tf.SparseTensor):
            y_true = tf.sparse.to_dense(y_true)
        return super().__call__(y_true, y_pred, sample_weight)

    def call(self, y_true, y_pred):
        return _multilabel_values(y_true, ops.cast(y_pred, "float32"))
