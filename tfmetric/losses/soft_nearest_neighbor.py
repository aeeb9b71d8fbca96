"""Soft nearest neighbour loss (Frosst, Papernot and Hinton 2019)."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import numerics, reduction, references, validation
from tfmetric._src.autograph import as_written
from tfmetric.losses import batch


@as_written
def soft_nearest_neighbor_loss(
    labels, embeddings, temperature=1.0, distance="squared_euclidean"
):
    """Soft nearest neighbour loss of Frosst et al. over a labelled batch.

    Each sample `i` with at least one positive costs

        L_i = -log(sum_{j != i, y_j = y_i} exp(-d(i, j) / T)
                   / sum_{k != i} exp(-d(i, k) / T))

    the negative log-probability that a soft nearest neighbour of `i` shares
    its label (`T` = `temperature`; the paper uses the squared euclidean
    distance). The loss is the mean of `L_i` over the samples that have a
    positive (the paper's mean over all samples is infinite for a singleton
    class); others give 0. For a similarity `s`, `-d` is replaced by `s`.

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        temperature: Positive temperature `T`. Defaults to `1.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"squared_euclidean"`.

    Returns:
        Per-sample values of shape `(B,)` whose mean is the loss.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> values = tfmetric.losses.soft_nearest_neighbor_loss(labels, embeddings)
    >>> round(float(np.mean(values)), 4)
    0.9514

    Reference:
        Frosst, Papernot and Hinton, "Analyzing and Improving Representations
        with the Soft Nearest Neighbor Loss", ICML 2019.
    """
    return reduction.mean_form(*_soft_nearest_neighbor_terms(labels, embeddings, temperature=temperature, distance=distance))


def _soft_nearest_neighbor_terms(
    labels,
    embeddings,
    temperature=1.0,
    distance="squared_euclidean",
    ref_labels=None,
    ref_embeddings=None,
    ref_valid=None,
):
    """Per-sample sums of the terms of `soft_nearest_neighbor_loss` and their counts.

    With references (`tfmetric._src.references`), each anchor's neighbours
    are the batch and the valid references.
    """
    temperature = validation.check_positive(temperature, "temperature")
    distance = distances_lib.get(distance)
    labels, embeddings = batch.prepare_labels_and_embeddings(labels, embeddings)
    columns, positive, negative = references.prepare(
        labels, embeddings, ref_labels, ref_embeddings, ref_valid
    )
    logits = distance.similarity(embeddings, columns) / temperature
    values = numerics.masked_logsumexp(
        logits, ops.logical_or(positive, negative)
    ) - numerics.masked_logsumexp(logits, positive)
    return reduction.valid_terms(values, ops.any(positive, axis=1))


@keras.saving.register_keras_serializable(package="tfmetric")
class SoftNearestNeighborLoss(batch.InBatchLoss):
    """Soft nearest neighbour loss on batches of (integer labels, embeddings).

    See `tfmetric.losses.soft_nearest_neighbor_loss` (mean over samples with a
    positive).

    Args:
        temperature: Positive temperature. Defaults to `1.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"squared_euclidean"`.
        reduction: Keras reduction of the per-sample values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"soft_nearest_neighbor_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Under a `tf.distribute` strategy, mine over the global
            batch gathered from all replicas (`False`: each replica mines its
            own samples). Defaults to `True`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.SoftNearestNeighborLoss())
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> round(float(tfmetric.losses.SoftNearestNeighborLoss()(labels, embeddings)), 4)
    0.9514

    Reference:
        Frosst, Papernot and Hinton, "Analyzing and Improving Representations
        with the Soft Nearest Neighbor Loss", ICML 2019.
    """

    fn = soft_nearest_neighbor_loss
    terms = _soft_nearest_neighbor_terms

    def __init__(
        self,
        temperature=1.0,
        distance="squared_euclidean",
        reduction="sum_over_batch_size",
        name="soft_nearest_neighbor_loss",
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
        self.temperature = validation.check_positive(temperature, "temperature")

    def _loss_arguments(self):
        return {"temperature": self.temperature}

