"""Contrastive loss on precomputed pair distances (TensorFlow Addons' form)."""

import numpy as np
from keras import ops

from tfmetric._src import inputs, validation
from tfmetric._src.autograph import as_written
from tfmetric.addons.losses import _common


def _align(y_true, y_pred):
    """Squeezes a trailing 1 so that `(B, 1)` labels never broadcast to `(B, B)`."""
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, -1)
    elif pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        y_pred = ops.squeeze(y_pred, -1)
    return y_true, y_pred


def _check_pairs(similar, distance):
    """One label in [0, 1] per distance (values checked when known: eagerly, not under a trace).

    Labels are 0/1 as in TensorFlow Addons; soft labels in between keep working
    (the loss stays >= 0), values outside would make it negative.
    """
    if (
        None not in similar.shape
        and None not in distance.shape
        and tuple(similar.shape) != tuple(distance.shape)
    ):
        raise ValueError(
            f"`y_true` has shape {tuple(similar.shape)} but `y_pred` has shape "
            f"{tuple(distance.shape)}; give one pair label per distance."
        )
    labels = inputs.static_value(similar)
    if labels is not None and not np.all((labels >= 0) & (labels <= 1)):
        bad = np.unique(labels[~((labels >= 0) & (labels <= 1))])[:5].tolist()
        raise ValueError(
            f"`y_true` must hold pair labels in [0, 1] (1 = similar, 0 = not); got {bad}."
        )


@_common.registered("contrastive_loss")
@as_written
def contrastive_loss(y_true, y_pred, margin=1.0):
    """Contrastive loss of each pair, from its label and its distance.

    `y_true * d² + (1 - y_true) * max(margin - d, 0)²` elementwise, with
    `y_true = 1` for a similar pair and `d = y_pred` the pair's distance, e.g.
    `keras.ops.norm(a - b, axis=1)`. Same values and gradients as
    `tfa.losses.contrastive_loss`; computed in float32 and returned in the
    floating dtype of `y_pred`. Labels of shape `(B, 1)` with distances of
    shape `(B,)` (or the reverse) are aligned instead of broadcast.

    Args:
        y_true: Binary pair labels (1 = similar), shape `(B,)`.
        y_pred: Pair distances, shape `(B,)`.
        margin: Non-negative margin. Defaults to `1.0`.

    Returns:
        Per-pair losses, shape `(B,)`.

    Example:

    >>> values = tfmetric.addons.contrastive_loss([1, 0, 0], [0.5, 0.25, 2.0])
    >>> np.asarray(values).tolist()
    [0.25, 0.5625, 0.0]

    Reference:
        Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an
        Invariant Mapping", CVPR 2006.
    """
    margin = validation.check_number(margin, "margin")
    y_pred = ops.convert_to_tensor(y_pred)
    distance = ops.cast(y_pred, "float32")
    similar = ops.cast(ops.convert_to_tensor(y_true), "float32")
    similar, distance = _align(similar, distance)
    _check_pairs(similar, distance)
    values = similar * ops.square(distance) + (1.0 - similar) * ops.square(
        ops.relu(margin - distance)
    )
    return _common.scalar_like(values, y_pred)


@_common.registered("ContrastiveLoss")
class ContrastiveLoss(_common.AddonsLoss):
    """Contrastive loss on pair distances; drop-in for `tfa.losses.ContrastiveLoss`.

    `y_true` holds binary pair labels (1 = similar) and `y_pred` the pairs'
    precomputed distances; see `tfmetric.addons.contrastive_loss`. (For the
    contrastive loss over all pairs of a labelled batch of embeddings, use
    `tfmetric.losses.ContrastiveLoss`.)

    Args:
        margin: Non-negative margin. Defaults to `1.0`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"contrastive_loss"`.
        dtype: Dtype of the loss computation. Defaults to `None` (float32).

    Example:

    >>> loss = tfmetric.addons.ContrastiveLoss(margin=1.0)
    >>> float(loss([1, 0], [0.5, 0.5]))
    0.25

    Reference:
        Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an
        Invariant Mapping", CVPR 2006.
    """

    # Addons' ContrastiveLoss, alone among its losses, applied its `reduction`.
    addons_mean = False

    def __init__(
        self, margin=1.0, reduction="sum_over_batch_size", name="contrastive_loss", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = validation.check_number(margin, "margin")

    def call(self, y_true, y_pred):
        return contrastive_loss(y_true, y_pred, self.margin)

    def get_config(self):
        config = super().get_config()
        config["margin"] = self.margin
        return config
