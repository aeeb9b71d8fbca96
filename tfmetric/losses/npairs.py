"""Multi-class N-pair loss (Sohn 2016) on labelled batches."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import numerics, reduction
from tfmetric._src.autograph import as_written
from tfmetric.losses import batch


@as_written
def npairs_loss(labels, embeddings, distance="inner_product"):
    """Multi-class N-pair loss of Sohn, built from a labelled batch.

    Each class with at least two samples contributes one pair: its first
    sample in batch order is the anchor `a_c`, its second the positive `p_c`.
    With `N` such classes, anchor `a_c` is classified among the `N` positives:

        L_c = log(1 + sum_{c' != c} exp(s(a_c, p_c') - s(a_c, p_c)))

    i.e. softmax cross entropy over `s(a_c, p_1..N)` with target `c` (the
    N-pair-mc loss). The loss is the mean of `L_c` over the `N` anchors;
    other samples (singleton classes, later samples of a class) give 0, so
    feed it the paper's N-pair batches: `N` classes, two samples each. The
    paper's L2 penalty on the embeddings is not included (add an activity
    regulariser to the model if wanted). For a distance, `s = -d` up to a
    constant, which the softmax ignores.

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"inner_product"`, as in the paper.

    Returns:
        Per-sample values of shape `(B,)` whose mean is the loss.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> values = tfmetric.losses.npairs_loss(labels, embeddings)
    >>> round(float(np.mean(values)), 4)
    0.5737

    Reference:
        Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
        Objective", NeurIPS 2016.
    """
    return reduction.mean_form(*_npairs_terms(labels, embeddings, distance=distance))


def _npairs_terms(labels, embeddings, distance="inner_product"):
    """Per-sample sums of the terms of `npairs_loss` and their counts."""
    distance = distances_lib.get(distance)
    labels, embeddings = batch.prepare_labels_and_embeddings(labels, embeddings)
    sim = distance.similarity(embeddings)
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    size = ops.shape(labels)[0]
    index = ops.arange(size, dtype="int32")
    earlier = ops.less(ops.expand_dims(index, 0), ops.expand_dims(index, 1))
    rank = ops.sum(ops.cast(ops.logical_and(same, earlier), "int32"), axis=1)
    second = ops.expand_dims(ops.equal(rank, 1), 0)
    target = ops.logical_and(same, second)
    anchor = ops.logical_and(ops.equal(rank, 0), ops.any(target, axis=1))
    target_logit = ops.sum(ops.where(target, sim, 0.0), axis=1)
    candidates = ops.broadcast_to(second, ops.shape(sim))
    values = numerics.masked_logsumexp(sim, candidates) - target_logit
    return reduction.valid_terms(values, anchor)


@keras.saving.register_keras_serializable(package="tfmetric")
class NPairsLoss(batch.InBatchLoss):
    """Multi-class N-pair loss on batches of (integer labels, embeddings).

    See `tfmetric.losses.npairs_loss`: one (anchor, positive) pair per class,
    the first two samples of the class in the batch; mean over those classes.
    Train on batches of `N` classes with two samples each, as in the paper.

    Args:
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"inner_product"`.
        reduction: Keras reduction of the per-sample values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"npairs_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Under a `tf.distribute` strategy, mine over the global
            batch gathered from all replicas (`False`: each replica mines its
            own samples). Defaults to `True`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.NPairsLoss())
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> round(float(tfmetric.losses.NPairsLoss()(labels, embeddings)), 4)
    0.5737

    Reference:
        Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
        Objective", NeurIPS 2016.
    """

    fn = npairs_loss
    terms = _npairs_terms
    references_unsupported = (
        "its anchors and candidates are the first and the second sample of each class within "
        "one batch (Sohn's N pairs); memory rows have no place in that structure. Use "
        "NTXentLoss, SupervisedContrastiveLoss or MultiSimilarityLoss with a memory."
    )

    def __init__(
        self,
        distance="inner_product",
        reduction="sum_over_batch_size",
        name="npairs_loss",
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
