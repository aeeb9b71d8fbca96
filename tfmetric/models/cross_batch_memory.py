"""Cross-batch memory (XBM): in-batch losses mined against the embeddings of past batches."""

import keras
from keras import ops

from tfmetric._src import distribute
from tfmetric._src import reduction as reduction_lib
from tfmetric._src.autograph import as_written
from tfmetric.layers.cross_batch_memory import CrossBatchMemory
from tfmetric.losses.batch import InBatchLoss
from tfmetric.models.checked_labels import CheckedLabelsMixin

__all__ = ["CrossBatchMemoryModel"]


@keras.saving.register_keras_serializable(package="tfmetric")
class CrossBatchMemoryModel(CheckedLabelsMixin, keras.Model):
    """An embedder trained with any in-batch loss against a memory of past batches.

    Cross-batch memory (XBM, Wang et al. 2020): embeddings drift slowly, so
    the embeddings of the last few thousand samples are still informative
    negatives and positives. The model keeps the last `memory_size`
    embeddings and labels in a `tfmetric.layers.CrossBatchMemory` ring buffer
    (saved with the model) and, at each training step, evaluates the compiled
    in-batch loss (any `tfmetric.losses` in-batch loss: `TripletLoss`,
    `MultiSimilarityLoss`, `ContrastiveLoss`, ...) with the current batch's
    samples as anchors and, as references, the batch followed by the memory
    (`InBatchLoss.reference_terms`): every anchor of the batch is mined
    against the batch and the stored embeddings (constants: gradients reach
    the current batch only), and the loss reduces the terms of the batch's
    anchors as the loss' `reduction` says (e.g. their mean). Slots not yet
    written (the first `memory_size / batch_size` steps) are left out. The
    batch is then enqueued. Evaluation (`evaluate`) uses the plain in-batch
    loss and leaves the memory unchanged. The loss' current arguments are
    read at each step, so a `tfmetric.callbacks.MiningSchedule` drives it as
    it drives a plain model (without a retrace for `TripletLoss`).
    `NPairsLoss` has no memory form (its N-pair structure lives within one
    batch) and is refused by `compile`.

    It is a functional model with the embedder's input and output: `predict`
    returns embeddings. Under a `tf.distribute` strategy each replica gathers
    the global batch, mines its own rows against the global batch plus the
    memory, and enqueues the global batch once (the memory is mirrored).

    The loss' matrices are `(B, B + M)`: memory O(B·M), forward and backward.

    Args:
        embedder: A Keras model with one defined input, mapping inputs to
            embeddings `(B, D)`.
        memory_size: Number of past embeddings kept (`>=` the global batch
            size).
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Example:

    >>> import keras
    >>> embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=8)
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.ContrastiveLoss())
    >>> x, y = np.random.rand(16, 4), np.arange(16) % 4
    >>> _ = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    >>> int(model.memory.count.numpy()), bool(model.memory.is_full())
    (16, True)

    Reference:
        Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020.
    """

    def __init__(self, embedder, memory_size, **kwargs):
        if not isinstance(embedder, keras.Model):
            raise TypeError(
                "`embedder` must be a Keras model with a defined input (built from "
                f"`keras.Input`); got {type(embedder).__name__}."
            )
        try:
            inputs = embedder.inputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs or len(inputs) != 1:
            raise ValueError("`embedder` must have exactly one defined input (`keras.Input`).")
        spec = inputs[0]
        inputs = keras.Input(tuple(spec.shape[1:]), dtype=spec.dtype, name="inputs")
        outputs = embedder(inputs)
        if len(outputs.shape) != 2 or outputs.shape[-1] is None:
            raise ValueError(
                f"`embedder` must output embeddings of shape (batch, dim); got {outputs.shape}."
            )
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.embedder = embedder
        self.memory_size = memory_size
        self.memory = CrossBatchMemory(memory_size, outputs.shape[-1], name="memory")
        self._memory_loss = None

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        if loss is not None and not isinstance(loss, InBatchLoss):
            raise TypeError(
                "`loss` must be an in-batch loss of `tfmetric.losses` (labels, embeddings); got "
                f"{loss!r}."
            )
        if loss is not None:
            loss.check_references_supported()
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        self._memory_loss = loss

    def get_compile_config(self):
        # `compile` passes the user's loss on, so Keras' own compile config holds it.
        return super().get_compile_config()

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            # Create the optimizer variables, so that saved optimizer state loads into them.
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not training or self._memory_loss is None:
            return super().compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
        labels = ops.convert_to_tensor(y)
        if len(labels.shape) == 2 and labels.shape[1] == 1:
            labels = ops.reshape(labels, (-1,))
        dtype = keras.backend.standardize_dtype(labels.dtype)
        if not dtype.startswith(("int", "uint")):
            raise ValueError(f"`y` must hold integer class labels; got dtype {dtype}.")
        labels = ops.cast(labels, "int64")
        embeddings = ops.cast(y_pred, "float32")
        context = distribute.replica_context()
        local_labels = labels
        global_size = embeddings.shape[0]
        if context is not None:
            if global_size is not None:
                global_size *= context.num_replicas_in_sync
            labels = distribute.all_gather(context, labels)
            embeddings = distribute.all_gather(context, embeddings)
        self.memory.check_batch_size(global_size)
        values, counts = self.memory_terms(labels, embeddings)
        all_counts = None
        if context is not None:
            all_counts = counts
            values = distribute.local_rows(context, values, local_labels)
            counts = distribute.local_rows(context, counts, local_labels)
        self.memory.enqueue(labels, embeddings)
        # This replica's share of the loss over the (global) batch's terms, as InBatchLoss.
        total = reduction_lib.reduce_terms(
            values, counts, self._memory_loss.reduction, sample_weight, context, all_counts
        )
        for extra in self.losses:
            total = total + self._aggregate_additional_loss(extra)
        return total

    @as_written
    def memory_terms(self, labels, embeddings):
        """Loss terms of a batch against itself and the memory: `(values, counts)`.

        The compiled loss' `reference_terms` with the batch as anchors and,
        as references, the batch followed by the memory's written slots: the
        sum of each sample's terms and their number.
        """
        memory_labels, memory_embeddings = self.memory()
        written = ops.less(ops.arange(self.memory_size, dtype="int64"), self.memory.count)
        values, counts = self._memory_loss.reference_terms(
            labels,
            embeddings,
            ref_labels=memory_labels,
            ref_embeddings=ops.stop_gradient(memory_embeddings),
            ref_valid=written,
        )
        return values, ops.cast(counts, "float32")

    def memory_values(self, labels, embeddings):
        """Per-sample loss values of a batch against itself and the memory: sums / counts."""
        values, counts = self.memory_terms(labels, embeddings)
        return ops.where(counts > 0, values / ops.maximum(counts, 1.0), 0.0)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "embedder": keras.saving.serialize_keras_object(self.embedder),
            "memory_size": self.memory_size,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        return cls(**config)
