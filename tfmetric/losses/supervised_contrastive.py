"""Supervised contrastive (SupCon) and NT-Xent losses on labelled batches."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import numerics, reduction, references, validation
from tfmetric._src.autograph import as_written
from tfmetric.losses import batch


def _logits(labels, embeddings, temperature, distance, ref_labels, ref_embeddings, ref_valid):
    temperature = validation.check_positive(temperature, "temperature")
    distance = distances_lib.get(distance)
    labels, embeddings = batch.prepare_labels_and_embeddings(labels, embeddings)
    columns, positive, negative = references.prepare(
        labels, embeddings, ref_labels, ref_embeddings, ref_valid
    )
    return distance.similarity(embeddings, columns) / temperature, positive, negative


@as_written
def supervised_contrastive_loss(labels, embeddings, temperature=0.1, distance="cosine"):
    """Supervised contrastive loss of Khosla et al. (the `L_out` form).

    With logits `z_ij = s(i, j) / temperature`, positives `P(i)` (the other
    samples with the label of `i`) and `A(i)` all samples but `i`:

        L_i = -1/|P(i)| * sum_{p in P(i)} log(exp(z_ip) / sum_{a in A(i)} exp(z_ia))

    The loss is the mean of `L_i` over the anchors that have a positive (the
    authors' code takes the mean over anchors; anchors without a positive give
    0 here instead of NaN; a batch of one label still has a non-zero loss, as
    the formula says). The authors' extra factor
    `temperature / base_temperature` is not applied. A distance `d` is used as
    the similarity `1 - d` (the cosine similarity for the default
    `"cosine"`, i.e. L2-normalised embeddings as in the paper).

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        temperature: Positive temperature. Defaults to `0.1`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"`.

    Returns:
        Per-anchor values of shape `(B,)` whose mean is the loss.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> values = tfmetric.losses.supervised_contrastive_loss(labels, embeddings)
    >>> round(float(np.mean(values)), 4)
    0.9668

    Reference:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
    """
    return reduction.mean_form(*_supervised_contrastive_terms(labels, embeddings, temperature=temperature, distance=distance))


def _supervised_contrastive_terms(
    labels,
    embeddings,
    temperature=0.1,
    distance="cosine",
    ref_labels=None,
    ref_embeddings=None,
    ref_valid=None,
):
    """Per-sample sums of the terms of `supervised_contrastive_loss` and their counts.

    With references (`tfmetric._src.references`), `P(i)` and `A(i)` are taken
    among the batch and the valid references.
    """
    logits, positive, negative = _logits(
        labels, embeddings, temperature, distance, ref_labels, ref_embeddings, ref_valid
    )
    others = ops.logical_or(positive, negative)
    positive_f = ops.cast(positive, "float32")
    count = ops.sum(positive_f, axis=1)
    mean_positive = ops.sum(ops.where(positive, logits, 0.0), axis=1) / ops.maximum(count, 1.0)
    values = numerics.masked_logsumexp(logits, others) - mean_positive
    return reduction.valid_terms(values, ops.greater(count, 0.0))


@as_written
def nt_xent_loss(labels, embeddings, temperature=0.1, distance="cosine"):
    """NT-Xent (normalised temperature-scaled cross entropy) of SimCLR.

    Every ordered positive pair `(i, p)` (same label, `p != i`, e.g. two
    augmented views of one image sharing an id) is a softmax classification
    of `p` against the negatives of `i` (other labels):

        l(i, p) = -log(exp(z_ip) / (exp(z_ip) + sum_{n negative} exp(z_in)))

    with `z = s / temperature`. Other positives of `i` are left out of the
    denominator, unlike `supervised_contrastive_loss`; with exactly two
    samples per label the two losses coincide. The loss is the mean of
    `l(i, p)` over all ordered positive pairs, as in SimCLR; a batch without
    positive pairs gives 0. A distance `d` is used as the similarity `1 - d`.

    Args:
        labels: Integer labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        temperature: Positive temperature. Defaults to `0.1`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"`.

    Returns:
        Per-anchor values of shape `(B,)` whose mean is the loss.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> values = tfmetric.losses.nt_xent_loss(labels, embeddings)
    >>> round(float(np.mean(values)), 4)
    0.9668

    Reference:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations", ICML 2020.
    """
    return reduction.mean_form(*_nt_xent_terms(labels, embeddings, temperature=temperature, distance=distance))


def _nt_xent_terms(
    labels,
    embeddings,
    temperature=0.1,
    distance="cosine",
    ref_labels=None,
    ref_embeddings=None,
    ref_valid=None,
):
    """Per-sample sums of the terms of `nt_xent_loss` and their counts.

    With references (`tfmetric._src.references`), positives and negatives are
    taken among the batch and the valid references.
    """
    logits, positive, negative = _logits(
        labels, embeddings, temperature, distance, ref_labels, ref_embeddings, ref_valid
    )
    has_negative = ops.any(negative, axis=1, keepdims=True)
    negative_lse = ops.expand_dims(numerics.masked_logsumexp(logits, negative), 1)
    # log(1 + sum_n exp(z_in - z_ip)), which is 0 when `i` has no negative.
    pair = ops.softplus(negative_lse - logits)
    pair = ops.where(ops.logical_and(positive, has_negative), pair, 0.0)
    return ops.sum(pair, axis=1), ops.sum(ops.cast(positive, "float32"), axis=1)


class _TemperatureLoss(batch.InBatchLoss):
    def __init__(self, temperature, distance, reduction, name, dtype, cross_replica):
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



@keras.saving.register_keras_serializable(package="tfmetric")
class SupervisedContrastiveLoss(_TemperatureLoss):
    """Supervised contrastive loss on batches of (integer labels, embeddings).

    See `tfmetric.losses.supervised_contrastive_loss` (the `L_out` form; mean
    over anchors with a positive).

    Args:
        temperature: Positive temperature. Defaults to `0.1`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"` (used as the cosine similarity).
        reduction: Keras reduction of the per-anchor values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"supervised_contrastive_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Under a `tf.distribute` strategy, mine over the global
            batch gathered from all replicas (`False`: each replica mines its
            own samples). Defaults to `True`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> loss = tfmetric.losses.SupervisedContrastiveLoss(temperature=0.1)
    >>> model.compile(optimizer="adam", loss=loss)
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> round(float(tfmetric.losses.SupervisedContrastiveLoss()(labels, embeddings)), 4)
    0.9668

    Reference:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
    """

    fn = supervised_contrastive_loss
    terms = _supervised_contrastive_terms

    def __init__(
        self,
        temperature=0.1,
        distance="cosine",
        reduction="sum_over_batch_size",
        name="supervised_contrastive_loss",
        dtype=None,
        cross_replica=True,
    ):
        super().__init__(temperature, distance, reduction, name, dtype, cross_replica)


@keras.saving.register_keras_serializable(package="tfmetric")
class NTXentLoss(_TemperatureLoss):
    """NT-Xent (SimCLR) loss on batches of (integer labels, embeddings).

    Samples with the same label are positives (e.g. the augmented views of one
    image, labelled by image id). See `tfmetric.losses.nt_xent_loss` (mean over
    ordered positive pairs).

    Args:
        temperature: Positive temperature. Defaults to `0.1`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"` (used as the cosine similarity).
        reduction: Keras reduction of the per-anchor values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"nt_xent_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Under a `tf.distribute` strategy, mine over the global
            batch gathered from all replicas (`False`: each replica mines its
            own samples). Defaults to `True`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.NTXentLoss(temperature=0.5))
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> round(float(tfmetric.losses.NTXentLoss()(labels, embeddings)), 4)
    0.9668

    Reference:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations", ICML 2020.
    """

    fn = nt_xent_loss
    terms = _nt_xent_terms

    def __init__(
        self,
        temperature=0.1,
        distance="cosine",
        reduction="sum_over_batch_size",
        name="nt_xent_loss",
        dtype=None,
        cross_replica=True,
    ):
        super().__init__(temperature, distance, reduction, name, dtype, cross_replica)
