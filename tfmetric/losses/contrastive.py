"""Contrastive (pairwise hinge) loss over all pairs of a labelled batch."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import reduction, references, validation
from tfmetric._src.autograph import as_written
from tfmetric.losses import batch


@as_written
def contrastive_loss(labels, embeddings, margin=1.0, distance="euclidean"):
    """Contrastive loss of Hadsell et al. over every pair in the batch.

    For a distance `d`, a positive pair (same label) costs `d²` and a negative
    pair `max(0, margin - d)²`. For a similarity `s` (e.g. `"inner_product"`)
    the roles turn around: a positive pair costs `max(0, margin - s)²` (pulled up
    to the margin) and a negative pair `max(0, s)²` (pushed below zero).

    Each sample's value is the mean over its `B - 1` pairs, so the batch mean is
    the mean over all ordered pairs `(i, j)`, `i != j`.

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        margin: Non-negative margin. Defaults to `1.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.

    Returns:
        Per-sample values of shape `(B,)` whose mean is the loss.

    Example:

    >>> import numpy as np
    >>> labels = np.array([0, 0, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 0.5], [0.0, 0.75]])
    >>> values = tfmetric.losses.contrastive_loss(labels, embeddings)
    >>> round(float(np.mean(values)), 4)
    0.2917

    Reference:
        Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an
        Invariant Mapping", CVPR 2006.
    """
    return reduction.mean_form(*_contrastive_terms(labels, embeddings, margin=margin, distance=distance))


def _contrastive_terms(
    labels,
    embeddings,
    margin=1.0,
    distance="euclidean",
    ref_labels=None,
    ref_embeddings=None,
    ref_valid=None,
):
    """Per-sample sums of the terms of `contrastive_loss` and their counts.

    With references (`tfmetric._src.references`), each sample's pairs are
    those with the batch and the valid references.
    """
    margin = validation.check_number(margin, "margin", maximum=validation.SQUARE_MAX)
    distance = distances_lib.get(distance)
    labels, embeddings = batch.prepare_labels_and_embeddings(labels, embeddings)
    columns, positive, negative = references.prepare(
        labels, embeddings, ref_labels, ref_embeddings, ref_valid
    )
    matrix = distance(embeddings, columns)
    near, far = distance.margin_bounds(margin)
    positive_cost = ops.square(ops.relu(distance.farther_by(matrix, near)))
    negative_cost = ops.square(ops.relu(distance.farther_by(far, matrix)))
    cost = ops.where(positive, positive_cost, 0.0) + ops.where(negative, negative_cost, 0.0)
    values = ops.sum(cost, axis=1)
    if columns is not None:
        pairs = ops.sum(ops.cast(ops.logical_or(positive, negative), "float32"), axis=1)
        return values, ops.maximum(pairs, 1.0)
    others = ops.maximum(ops.cast(ops.shape(labels)[0] - 1, "float32"), 1.0)
    return values, ops.ones_like(values) * others


@keras.saving.register_keras_serializable(package="tfmetric")
class ContrastiveLoss(batch.InBatchLoss):
    """Contrastive loss over all pairs of a batch of (integer labels, embeddings).

    See `tfmetric.losses.contrastive_loss`. For TensorFlow Addons' loss on
    precomputed pair distances with binary labels, use
    `tfmetric.addons.ContrastiveLoss`.

    Args:
        margin: Non-negative margin. Defaults to `1.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        reduction: Keras reduction of the per-sample values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"contrastive_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Under a `tf.distribute` strategy, mine over the global
            batch gathered from all replicas (`False`: each replica mines its
            own samples). Defaults to `True`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.ContrastiveLoss(margin=0.5))
    >>> labels = np.array([0, 0, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 0.5], [0.0, 0.75]])
    >>> round(float(tfmetric.losses.ContrastiveLoss()(labels, embeddings)), 4)
    0.2917

    Reference:
        Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an
        Invariant Mapping", CVPR 2006.
    """

    fn = contrastive_loss
    terms = _contrastive_terms

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        reduction="sum_over_batch_size",
        name="contrastive_loss",
        dtype=None,
        cross_replica=True,
    ):
        super().__init__(
            distance=distance,
            name=name,
            reduction=reduction,
            dtype=dtype,
            cross_replica=cross_replica,
        )
        self.margin = validation.check_number(margin, "margin", maximum=validation.SQUARE_MAX)

    def _loss_arguments(self):
        return {"margin": self.margin}

