"""The base class of in-batch metric losses and the pieces the losses share.

In-batch losses take integer class labels `y_true` of shape `(B,)` or `(B, 1)`
and embeddings `y_pred` of shape `(B, D)`. Every pair of samples with the same
label is a positive pair (a sample is never its own positive), every pair with
different labels a negative pair.
"""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import distribute, inputs, numerics, validation
from tfmetric._src import reduction as reduction_lib
from tfmetric._src.autograph import as_written

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

    Subclasses set `fn` (the public functional form) and `terms` (its core,
    called as `terms(labels, embeddings, distance=self.distance,
    **self._loss_arguments())` and returning per-sample sums of terms and
    their counts, see `tfmetric._src.reduction`), keep one attribute per
    constructor argument and return their own arguments from
    `_loss_arguments`, which `get_config` also saves.

    The cores also take references (`ref_labels`, `ref_embeddings`,
    `ref_valid`, see `tfmetric._src.references`): the batch's anchors against
    the batch followed by `M` other embeddings (a cross-batch memory), in
    `(B, B + M)` matrices; `reference_terms` calls them. A loss whose
    definition has no such form sets `references_unsupported` to the reason.

    Calling the loss validates the batch and reduces the terms as Keras
    documents (`"none"`: per-sample values; `"sum"`; `"sum_over_batch_size"`:
    the loss as its functional form defines it; `"mean_with_sample_weight"`:
    the weighted mean over the terms); `call` returns the per-sample values.

    Under a `tf.distribute` strategy with several replicas (and
    `cross_replica=True`), each replica all-gathers the labels and float32
    embeddings of every replica and mines over the global batch: its
    per-sample values are those of its own samples (rows) against the global
    batch (columns), and it returns its share of the global reduction, so
    that with R replicas of B/R samples training matches one device with B
    samples. The all-gather's gradient sums the replicas' gradients and
    returns each replica its own rows. Only XLA-supported ops are used, as
    `TPUStrategy` requires.
    """

    fn = None
    terms = None
    references_unsupported = None

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

    @as_written
    def __call__(self, y_true, y_pred, sample_weight=None):
        # Host labels beyond int32 under JAX: renumbered (only equality matters here).
        y_true = inputs.check_host_labels(y_true, LOSS_INPUT_NAMES[0], renumber=True)
        if distribute.in_cross_replica_build():
            # Keras' build under a strategy passes the replica-mean of the labels.
            y_true = ops.cast(ops.convert_to_tensor(y_true), "int32")
        labels, embeddings = prepare_labels_and_embeddings(y_true, y_pred, LOSS_INPUT_NAMES)
        with keras.name_scope(self.name):
            context = self._replica_context()
            if context is None:
                values, counts = self._terms(labels, embeddings)
                all_counts = None
            else:
                values, all_counts = self._terms(
                    distribute.all_gather(context, labels),
                    distribute.all_gather(context, embeddings),
                )
                values = distribute.local_rows(context, values, labels)
                counts = distribute.local_rows(context, all_counts, labels)
            loss = reduction_lib.reduce_terms(
                values, counts, self.reduction, sample_weight, context, all_counts
            )
            return ops.cast(loss, self.dtype)

    def call(self, y_true, y_pred):
        labels, embeddings = prepare_labels_and_embeddings(y_true, y_pred, LOSS_INPUT_NAMES)
        return self._terms(labels, embeddings)[0]

    @as_written
    def reference_terms(self, labels, embeddings, ref_labels, ref_embeddings, ref_valid=None):
        """Per-sample `(values, counts)` of the batch's anchors against the batch and references.

        The loss' terms (see `tfmetric._src.reduction`) with each sample of
        the batch `(labels, embeddings)` as an anchor and, as the other side
        of its pairs, the batch itself (never the sample itself) followed by
        the references `(ref_labels, ref_embeddings)` whose `ref_valid` flag
        is true (all by default). Matrices are `(B, B + M)`. The loss' current
        (e.g. scheduled) arguments are used.

        Raises:
            ValueError: for a loss without such a form (its
                `references_unsupported` says why), or bad references.
        """
        self.check_references_supported()
        labels, embeddings = prepare_labels_and_embeddings(labels, embeddings)
        return self._terms(
            labels,
            embeddings,
            ref_labels=ref_labels,
            ref_embeddings=ref_embeddings,
            ref_valid=ref_valid,
        )

    @classmethod
    def check_references_supported(cls):
        """Raises a `ValueError` saying why when the loss cannot take references."""
        if cls.references_unsupported is not None or cls.terms is None:
            reason = cls.references_unsupported or "it has no terms core"
            raise ValueError(
                f"{cls.__name__} cannot use references (a cross-batch memory): {reason}"
            )

    def _terms(self, labels, embeddings, **references):
        arguments = dict(distance=self.distance, **self._call_arguments())
        if type(self).terms is None:
            # A subclass with only a functional form: one term per sample.
            values = type(self).fn(labels, embeddings, **arguments)
            counts = ops.ones_like(values)
        else:
            values, counts = type(self).terms(labels, embeddings, **arguments, **references)
        # Mining may select around a NaN embedding; the loss (counts too, so
        # that no division turns it into 0) must still be NaN for
        # `TerminateOnNaN`.
        return numerics.nan_unless_finite((values, counts), embeddings)

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
