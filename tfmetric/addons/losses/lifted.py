"""Lifted structured loss (TensorFlow Addons' form) in O(B²) memory."""

from keras import ops

from tfmetric._src import inputs, reduction
from tfmetric._src.autograph import as_written
from tfmetric.addons.losses import _common, metric_learning
from tfmetric.losses import batch


def _masked_logsumexp(x, mask):
    """Row-wise log-sum-exp over `mask`; 0 (finite gradient) on empty rows."""
    has_any = ops.any(mask, axis=1)
    row_max = ops.stop_gradient(
        ops.where(has_any, ops.max(ops.where(mask, x, -float("inf")), axis=1), 0.0)
    )
    shifted = ops.where(mask, x - ops.expand_dims(row_max, 1), 0.0)
    total = ops.sum(ops.where(mask, ops.exp(shifted), 0.0), axis=1)
    return ops.where(has_any, row_max + ops.log(ops.where(has_any, total, 1.0)), 0.0), has_any


def _lifted_values(labels, embeddings, margin):
    """Per-anchor values whose mean is Addons' lifted structured loss."""
    margin = _common.margin_value(margin)
    labels, embeddings = batch.prepare_labels_and_embeddings(labels, embeddings)
    dist = metric_learning.pairwise_distance(embeddings)
    positive, negative = inputs.label_masks(labels)
    # log sum_{n in N(i)} exp(margin - d(i, n)), one value per sample: the
    # (B, B) positive-pair terms then need no tiling.
    log_neg, has_negative = _masked_logsumexp(margin - dist, negative)
    pair_term = ops.logaddexp(ops.expand_dims(log_neg, 1), ops.expand_dims(log_neg, 0)) + dist
    # Negatives exist for one sample iff they exist for all (a one-class batch
    # has none): there Addons gives NaN, we give 0.
    valid = ops.logical_and(positive, ops.expand_dims(has_negative, 1))
    per_pair = ops.where(valid, ops.square(ops.relu(pair_term)), 0.0)
    pairs = ops.sum(ops.cast(positive, "float32"))
    return reduction.mean_form(ops.sum(per_pair, axis=1) / 2.0, pairs)


@_common.registered("lifted_struct_loss")
@as_written
def lifted_struct_loss(labels, embeddings, margin=1.0):
    """Lifted structured loss of Oh Song et al. (TensorFlow Addons' form).

    For every positive pair `(i, j)`,
    `J_ij = log(sum_{n in N(i)} exp(margin - d_in) + sum_{n in N(j)} exp(margin - d_jn)) + d_ij`
    with euclidean `d` and `N(i)` the negatives of `i`; the loss is
    `sum_{(i, j)} max(J_ij, 0)² / (2 |P|)` over unordered positive pairs `P`.

    Same values and gradients as `tfa.losses.lifted_struct_loss`, except that
    a batch without positive pairs or without negatives gives 0 with a zero
    gradient (Addons: NaN), and memory is O(B²) (Addons tiles the `(B, B)`
    matrix B times).

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings (not L2-normalised), shape `(B, D)`; computed
            in float32.
        margin: Non-negative margin: a number or a floating scalar tensor or
            variable (assigning to a variable changes the loss). Defaults to `1.0`.

    Returns:
        The scalar loss, with the floating dtype of `embeddings`.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> loss = tfmetric.addons.lifted_struct_loss(labels, embeddings)
    >>> round(float(loss), 4)
    2.5956

    Reference:
        Oh Song, Xiang, Jegelka and Savarese, "Deep Metric Learning via Lifted
        Structured Feature Embedding", CVPR 2016.
    """
    margin = _common.check_margin(margin)
    embeddings = ops.convert_to_tensor(embeddings)
    return _common.scalar_like(ops.mean(_lifted_values(labels, embeddings, margin)), embeddings)


@_common.registered("LiftedStructLoss")
class LiftedStructLoss(_common.LabelLoss):
    """Lifted structured loss; drop-in for `tfa.losses.LiftedStructLoss`.

    See `tfmetric.addons.lifted_struct_loss`.

    Args:
        margin: Non-negative margin: a number or a floating scalar tensor or
            variable (assigning to a variable changes the loss). Defaults to `1.0`.
        name: Name of the loss. Defaults to `None` (`"lifted_struct_loss"`).
        **kwargs: Keras' `reduction` (defaults to `"sum_over_batch_size"`) and
            `dtype`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.addons.LiftedStructLoss())
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> round(float(tfmetric.addons.LiftedStructLoss()(labels, embeddings)), 4)
    2.5956

    Reference:
        Oh Song, Xiang, Jegelka and Savarese, "Deep Metric Learning via Lifted
        Structured Feature Embedding", CVPR 2016.
    """

    def __init__(self, margin=1.0, name=None, **kwargs):
        reduction, dtype = _common.split_loss_options(type(self).__name__, kwargs)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = _common.check_margin(margin)

    def per_sample(self, labels, y_pred):
        return _lifted_values(labels, y_pred, self.margin)

    def get_config(self):
        config = super().get_config()
        config["margin"] = _common.margin_config(self.margin)
        return config
