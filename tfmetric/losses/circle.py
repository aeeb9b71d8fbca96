"""Circle loss, pair-wise form (Sun et al. 2020)."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import numerics, reduction, references, validation
from tfmetric._src.autograph import as_written
from tfmetric.losses import batch


@as_written
def circle_loss(labels, embeddings, margin=0.25, gamma=256.0, distance="cosine"):
    """Circle loss of Sun et al. over every pair of a labelled batch.

    With the similarity `s` (larger means closer), optima `O_p = 1 + margin`,
    `O_n = -margin` and decision margins `D_p = 1 - margin`, `D_n = margin`,
    each anchor with at least one positive and one negative costs

        L_i = softplus(logsumexp_p(-gamma * a_p * (s_p - D_p))
                       + logsumexp_n(gamma * a_n * (s_n - D_n)))

    with self-paced weights `a_p = max(O_p - s_p, 0)`, `a_n = max(s_n - O_n, 0)`,
    which are treated as constants in the gradient as in the authors' code.
    The loss is the mean of `L_i` over the anchors that have both a positive
    and a negative; other anchors give 0. A distance `d` is used as the
    similarity `1 - d` (the cosine similarity for the default `"cosine"`).

    Unlike `keras.losses.Circle` (defaults `gamma=80`, `margin=0.4`), this loss
    follows the paper's defaults, normalises embeddings through its distance
    instead of expecting L2-normalised inputs, stops the gradient through the
    weights `a_p`, `a_n`, and averages over valid anchors; on L2-normalised
    embeddings the per-anchor values are the same.

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        margin: Non-negative relaxation margin `m`. Defaults to `0.25`.
        gamma: Positive scale factor. Defaults to `256.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"`.

    Returns:
        Per-anchor values of shape `(B,)` whose mean is the loss.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> values = tfmetric.losses.circle_loss(labels, embeddings, gamma=16)
    >>> round(float(np.mean(values)), 4)
    8.9005

    Reference:
        Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity
        Optimization", CVPR 2020.
    """
    return reduction.mean_form(*_circle_terms(labels, embeddings, margin=margin, gamma=gamma, distance=distance))


def _circle_terms(
    labels,
    embeddings,
    margin=0.25,
    gamma=256.0,
    distance="cosine",
    ref_labels=None,
    ref_embeddings=None,
    ref_valid=None,
):
    """Per-sample sums of the terms of `circle_loss` and their counts.

    With references (`tfmetric._src.references`), each anchor's pairs are
    those with the batch and the valid references.
    """
    margin = validation.check_number(margin, "margin")
    gamma = validation.check_positive(gamma, "gamma")
    distance = distances_lib.get(distance)
    labels, embeddings = batch.prepare_labels_and_embeddings(labels, embeddings)
    columns, positive, negative = references.prepare(
        labels, embeddings, ref_labels, ref_embeddings, ref_valid
    )
    sim = distance.similarity(embeddings, columns)
    const = ops.stop_gradient(sim)
    weight_positive = ops.relu(1.0 + margin - const)
    weight_negative = ops.relu(const + margin)
    positive_logits = -gamma * weight_positive * (sim - (1.0 - margin))
    negative_logits = gamma * weight_negative * (sim - margin)
    total = numerics.masked_logsumexp(positive_logits, positive) + numerics.masked_logsumexp(
        negative_logits, negative
    )
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    return reduction.valid_terms(ops.softplus(total), valid)


@keras.saving.register_keras_serializable(package="tfmetric")
class CircleLoss(batch.InBatchLoss):
    """Circle loss on batches of (integer labels, embeddings).

    See `tfmetric.losses.circle_loss` for the formula, the normalisation (mean
    over anchors with a positive and a negative) and the differences from
    `keras.losses.Circle`.

    Args:
        margin: Non-negative relaxation margin. Defaults to `0.25`.
        gamma: Positive scale factor. Defaults to `256.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"` (used as the cosine similarity).
        reduction: Keras reduction of the per-anchor values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"circle_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Under a `tf.distribute` strategy, mine over the global
            batch gathered from all replicas (`False`: each replica mines its
            own samples). Defaults to `True`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.CircleLoss(gamma=64))
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> round(float(tfmetric.losses.CircleLoss(gamma=16)(labels, embeddings)), 4)
    8.9005

    Reference:
        Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity
        Optimization", CVPR 2020.
    """

    fn = circle_loss
    terms = _circle_terms

    def __init__(
        self,
        margin=0.25,
        gamma=256.0,
        distance="cosine",
        reduction="sum_over_batch_size",
        name="circle_loss",
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
        self.gamma = validation.check_positive(gamma, "gamma")

    def _loss_arguments(self):
        return {"margin": self.margin, "gamma": self.gamma}

