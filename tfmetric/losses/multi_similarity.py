"""Multi-similarity loss with its pair-mining step (Wang et al. 2019)."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import numerics, reduction, references, validation
from tfmetric._src.autograph import as_written
from tfmetric.losses import batch


@as_written
def multi_similarity_loss(
    labels,
    embeddings,
    alpha=2.0,
    beta=50.0,
    base=0.5,
    epsilon=0.1,
    distance="cosine",
):
    """Multi-similarity loss of Wang et al. over a labelled batch.

    Pairs are first mined per anchor `i` on the similarity `S` (larger means
    closer): a positive pair `(i, j)` is kept when
    `S_ij < max_{k negative} S_ik + epsilon`, a negative pair `(i, k)` when
    `S_ik > min_{j positive} S_ij - epsilon` (an anchor without negatives
    keeps no positive pair, one without positives no negative pair). The kept
    pairs `P_i`, `N_i` are weighted as in the paper:

        L_i = 1/alpha * log(1 + sum_{P_i} exp(-alpha * (S_ij - base)))
            + 1/beta  * log(1 + sum_{N_i} exp(beta * (S_ik - base)))

    and the loss is the mean of `L_i` over all `B` anchors (the paper's `1/m`);
    anchors without kept pairs contribute 0. Mining is a selection and passes
    no gradient. A distance `d` is used as the similarity `1 - d` (the cosine
    similarity for the default `"cosine"`).

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        alpha: Positive scale of the positive pairs. Defaults to `2.0`.
        beta: Positive scale of the negative pairs. Defaults to `50.0`.
        base: The similarity threshold `lambda`. Defaults to `0.5`.
        epsilon: Non-negative mining margin. Defaults to `0.1`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"`.

    Returns:
        Per-anchor values of shape `(B,)` whose mean is the loss.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> values = tfmetric.losses.multi_similarity_loss(labels, embeddings)
    >>> round(float(np.mean(values)), 4)
    0.3394

    Reference:
        Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep
        Metric Learning", CVPR 2019.
    """
    return reduction.mean_form(*_multi_similarity_terms(labels, embeddings, alpha=alpha, beta=beta, base=base, epsilon=epsilon, distance=distance))


def _multi_similarity_terms(
    labels,
    embeddings,
    alpha=2.0,
    beta=50.0,
    base=0.5,
    epsilon=0.1,
    distance="cosine",
    ref_labels=None,
    ref_embeddings=None,
    ref_valid=None,
):
    """Per-sample sums of the terms of `multi_similarity_loss` and their counts.

    With references (`tfmetric._src.references`), each anchor mines its pairs
    among the batch and the valid references.
    """
    alpha = validation.check_positive(alpha, "alpha")
    beta = validation.check_positive(beta, "beta")
    base = validation.check_number(base, "base", allow_negative=True)
    epsilon = validation.check_number(epsilon, "epsilon")
    distance = distances_lib.get(distance)
    labels, embeddings = batch.prepare_labels_and_embeddings(labels, embeddings)
    columns, positive, negative = references.prepare(
        labels, embeddings, ref_labels, ref_embeddings, ref_valid
    )
    sim = distance.similarity(embeddings, columns)
    const = ops.stop_gradient(sim)
    hardest_negative = ops.max(ops.where(negative, const, -float("inf")), axis=1, keepdims=True)
    hardest_positive = ops.min(ops.where(positive, const, float("inf")), axis=1, keepdims=True)
    kept_positive = ops.logical_and(positive, ops.less(const, hardest_negative + epsilon))
    kept_negative = ops.logical_and(negative, ops.greater(const, hardest_positive - epsilon))
    positive_term = numerics.masked_logsumexp(-alpha * (sim - base), kept_positive, add_one=True)
    negative_term = numerics.masked_logsumexp(beta * (sim - base), kept_negative, add_one=True)
    values = positive_term / alpha + negative_term / beta
    return values, ops.ones_like(values)


@keras.saving.register_keras_serializable(package="tfmetric")
class MultiSimilarityLoss(batch.InBatchLoss):
    """Multi-similarity loss on batches of (integer labels, embeddings).

    See `tfmetric.losses.multi_similarity_loss` for the mining rule and the
    normalisation (mean over all anchors).

    Args:
        alpha: Positive scale of the positive pairs. Defaults to `2.0`.
        beta: Positive scale of the negative pairs. Defaults to `50.0`.
        base: The similarity threshold `lambda`. Defaults to `0.5`.
        epsilon: Non-negative mining margin. Defaults to `0.1`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"` (used as the cosine similarity).
        reduction: Keras reduction of the per-anchor values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"multi_similarity_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Under a `tf.distribute` strategy, mine over the global
            batch gathered from all replicas (`False`: each replica mines its
            own samples). Defaults to `True`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.MultiSimilarityLoss())
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> round(float(tfmetric.losses.MultiSimilarityLoss()(labels, embeddings)), 4)
    0.3394

    Reference:
        Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep
        Metric Learning", CVPR 2019.
    """

    fn = multi_similarity_loss
    terms = _multi_similarity_terms

    def __init__(
        self,
        alpha=2.0,
        beta=50.0,
        base=0.5,
        epsilon=0.1,
        distance="cosine",
        reduction="sum_over_batch_size",
        name="multi_similarity_loss",
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
        self.alpha = validation.check_positive(alpha, "alpha")
        self.beta = validation.check_positive(beta, "beta")
        self.base = validation.check_number(base, "base", allow_negative=True)
        self.epsilon = validation.check_number(epsilon, "epsilon")

    def _loss_arguments(self):
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "base": self.base,
            "epsilon": self.epsilon,
        }

