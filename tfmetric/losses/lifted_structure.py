"""Generalised lifted structure loss (Hermans et al. 2017)."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import numerics, reduction, references, validation
from tfmetric._src.autograph import as_written
from tfmetric.losses import batch


@as_written
def lifted_structure_loss(labels, embeddings, margin=1.0, distance="euclidean"):
    """Generalised lifted structure loss over a labelled batch.

    For every anchor `a` with at least one positive and one negative:

        L_a = max(0, log(sum_p exp(d(a, p))) + log(sum_n exp(margin - d(a, n))))

    a smooth version of "farthest positive closer than the closest negative by
    `margin`". The loss is the mean of `L_a` over the anchors that have both a
    positive and a negative; other anchors give 0. For a similarity such as
    `"inner_product"`, `d = -s`. This is the generalisation by Hermans et al.
    of the lifted structured loss of Song et al. (which works on positive pairs
    with a squared hinge); it matches pytorch-metric-learning's
    `GeneralizedLiftedStructureLoss` with `pos_margin=0`.

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        margin: Non-negative margin. Defaults to `1.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.

    Returns:
        Per-anchor values of shape `(B,)` whose mean is the loss.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> values = tfmetric.losses.lifted_structure_loss(labels, embeddings)
    >>> round(float(np.mean(values)), 4)
    1.3823

    Reference:
        Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
        Re-Identification", 2017; Song et al., "Deep Metric Learning via Lifted
        Structured Feature Embedding", CVPR 2016.
    """
    return reduction.mean_form(*_lifted_structure_terms(labels, embeddings, margin=margin, distance=distance))


def _lifted_structure_terms(
    labels,
    embeddings,
    margin=1.0,
    distance="euclidean",
    ref_labels=None,
    ref_embeddings=None,
    ref_valid=None,
):
    """Per-sample sums of the terms of `lifted_structure_loss` and their counts.

    With references (`tfmetric._src.references`), each anchor's positives and
    negatives are among the batch and the valid references.
    """
    margin = validation.check_number(margin, "margin")
    distance = distances_lib.get(distance)
    labels, embeddings = batch.prepare_labels_and_embeddings(labels, embeddings)
    columns, positive, negative = references.prepare(
        labels, embeddings, ref_labels, ref_embeddings, ref_valid
    )
    dist = distance.dissimilarity(embeddings, columns)
    total = numerics.masked_logsumexp(dist, positive) + numerics.masked_logsumexp(
        margin - dist, negative
    )
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    return reduction.valid_terms(ops.relu(total), valid)


@keras.saving.register_keras_serializable(package="tfmetric")
class LiftedStructureLoss(batch.InBatchLoss):
    """Generalised lifted structure loss on batches of (integer labels, embeddings).

    See `tfmetric.losses.lifted_structure_loss` (mean over anchors with a
    positive and a negative).

    Args:
        margin: Non-negative margin. Defaults to `1.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        reduction: Keras reduction of the per-anchor values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"lifted_structure_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Under a `tf.distribute` strategy, mine over the global
            batch gathered from all replicas (`False`: each replica mines its
            own samples). Defaults to `True`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.LiftedStructureLoss())
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> round(float(tfmetric.losses.LiftedStructureLoss()(labels, embeddings)), 4)
    1.3823

    Reference:
        Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
        Re-Identification", 2017.
    """

    fn = lifted_structure_loss
    terms = _lifted_structure_terms

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        reduction="sum_over_batch_size",
        name="lifted_structure_loss",
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
        self.margin = validation.check_number(margin, "margin")

    def _loss_arguments(self):
        return {"margin": self.margin}

