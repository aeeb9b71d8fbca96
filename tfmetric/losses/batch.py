"""The base class of in-batch metric losses and the pieces the losses share.

In-batch losses take integer class labels `y_true` of shape `(B,)` or `(B, 1)`
and embeddings `y_pred` of shape `(B, D)`. Every pair of samples with the same
label is a positive pair (a sample is never its own positive), every pair with
different labels a negative pair.
"""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import distribute, inputs, validation

LOSS_INPUT_NAMES = ("y_true", "y_pred")


def prepare_labels_and_embeddings(labels, embeddings, names=("labels", "embeddings")):
    """Validates and standardises a labelled batch of a functional loss.

    Returns:
        `(labels, embeddings)`: int32-or-int64 labels of shape `(B,)` and float32
        embeddings of shape `(B, D)`.

    Raises:
        ValueError: naming the argument (`names`) for wrong ranks, lengths,
            dtypes, non-integer labels or NaN/Inf embeddings, where known.
    """
    return inputs.check_labels_and_embeddings(labels, embeddings, names)


class InBatchLoss(keras.losses.Loss):
    """Base of the losses computed over all pairs of a labelled batch.

    Subclasses set `fn` (the functional twin, called as `fn(labels,
    embeddings, distance=self.distance, **self._loss_arguments())`), keep one
    attribute per constructor argument and return their own arguments from
    `_loss_arguments`, which `get_config` also saves. Labels are validated before Keras casts them to the
    loss dtype, and replaced by first-occurrence ids so that the cast is
    lossless.

    Under a `tf.distribute` strategy with several replicas (and
    `cross_replica=True`), each replica all-gathers the labels and float32
    embeddings of every replica and mines over the global batch: its
    per-sample values are those of its own samples (rows) against the global
    batch (columns). The all-gather's gradient sums the replicas' gradients and
    returns each replica its own rows, and the values are scaled so that the
    sum over replicas of Keras' per-replica loss is the loss of one device
    running the whole global batch — with R replicas of B/R samples, training
    matches one device with B samples. Only XLA-supported ops are used, as
    `TPUStrategy` requires.
    """

    fn = None

    def __init__(
        self,
        distance="euclidean",
        name=None,
        reduction="sum_over_batch_size",
        dtype=None,
        cross_replica=True,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.distance = distances_lib.get(distance)
        self.cross_replica = validation.check_bool(cross_replica, "cross_replica")

    def __call__(self, y_true, y_pred, sample_weight=None):
        if distribute.in_cross_replica_build():
            # Keras' build under a strategy passes the replica-mean of the labels.
            y_true = ops.cast(ops.convert_to_tensor(y_true), "int32")
        labels, _ = prepare_labels_and_embeddings(y_true, y_pred, LOSS_INPUT_NAMES)
        context = self._replica_context()
        if context is None:
            ids = inputs.first_occurrence_ids(labels)
        else:
            ids = distribute.local_rows(
                context, inputs.first_occurrence_ids(distribute.all_gather(context, labels)), labels
            )
        return super().__call__(ids, y_pred, sample_weight)

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")
        context = self._replica_context()
        if context is None:
            return type(self).fn(labels, y_pred, distance=self.distance, **self._call_arguments())
        embeddings = ops.cast(y_pred, "float32")
        values = type(self).fn(
            distribute.all_gather(context, labels),
            distribute.all_gather(context, embeddings),
            distance=self.distance,
            **self._call_arguments(),
        )
        rows = distribute.local_rows(context, values, labels)
        if self.reduction not in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
            return rows
        # Keras' per-replica mean, divided by R for the distribution, sums over
        # replicas to the global mean when the rows are scaled by R * b / G
        # (R replicas, b local and G global samples).
        size = ops.shape(labels)[0]
        total = distribute.sum_over_replicas(context, size)
        factor = ops.cast(context.num_replicas_in_sync * size, "float32") / ops.cast(
            total, "float32"
        )
        return rows * factor

    def _replica_context(self):
        """The replica context to gather over, or `None` for per-replica mining."""
        if not self.cross_replica:
            return None
        return distribute.replica_context()

    def _call_arguments(self):
        """The arguments passed to `fn` at call time (scheduled values may replace some)."""
        return self._loss_arguments()

    def _loss_arguments(self):
        """The loss's own arguments (besides `distance`), passed to `fn` and saved in the config."""
        return {}

    def get_config(self):
        config = super().get_config()
        config["dtype"] = self._dtype_policy.name
        config["distance"] = distances_lib.serialize(self.distance)
        config["cross_replica"] = self.cross_replica
        config.update(self._loss_arguments())
        return config
