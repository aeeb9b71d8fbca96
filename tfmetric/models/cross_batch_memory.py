"""Cross-batch memory (XBM): in-batch losses mined against the embeddings of past batches."""

import inspect

import keras
from keras import ops

from tfmetric._src import distribute
from tfmetric._src import reduction as reduction_lib
from tfmetric.layers.cross_batch_memory import CrossBatchMemory
from tfmetric.losses.batch import InBatchLoss

__all__ = ["CrossBatchMemoryModel"]


def _loss_terms(loss):
    """`terms(labels, embeddings) -> (values, counts)` of an in-batch loss, with its arguments.

    `values[i]` is the sum of sample `i`'s loss terms and `counts[i]` their
    number (see `InBatchLoss`); a loss with only a functional form has one
    term per sample.
    """
    cls = type(loss)
    core = cls.terms if cls.terms is not None else cls.fn
    config = loss.get_config()
    names = set(inspect.signature(core).parameters) - {"labels", "embeddings", "distance"}
    arguments = {name: config[name] for name in names if name in config}

    def terms(labels, embeddings):
        if cls.terms is None:
            values = cls.fn(labels, embeddings, distance=loss.distance, **arguments)
            return values, ops.ones_like(values)
        return cls.terms(labels, embeddings, distance=loss.distance, **arguments)

    return terms


@keras.saving.register_keras_serializable(package="tfmetric")
class CrossBatchMemoryModel(keras.Model):
    """An embedder trained with any in-batch loss against a memory of past batches.

    Cross-batch memory (XBM, Wang et al. 2020): embeddings drift slowly, so
    the embeddings of the last few thousand samples are still informative
    negatives and positives. The model keeps the last `memory_size`
    embeddings and labels in a `tfmetric.layers.CrossBatchMemory` ring buffer
    (saved with the model) and, at each training step, evaluates the compiled
    in-batch loss (any `tfmetric.losses` in-batch loss: `TripletLoss`,
    `MultiSimilarityLoss`, `ContrastiveLoss`, ...) on the current batch
    followed by the memory, keeping the current batch's rows: every anchor of
    the batch is mined against the batch and the `memory_size` stored
    embeddings (constants: gradients reach the current batch only), and the
    loss reduces the terms of the batch's anchors as the loss' `reduction`
    says (e.g. their mean). The batch is then enqueued. The memory joins the loss once it is full
    (`memory_size / batch_size` steps, XBM's warm-up); until then the loss is
    the plain in-batch loss. Evaluation (`evaluate`) uses the plain in-batch
    loss and leaves the memory unchanged.

    It is a functional model with the embedder's input and output: `predict`
    returns embeddings. Under a `tf.distribute` strategy each replica gathers
    the global batch, mines its own rows against the global batch plus the
    memory, and enqueues the global batch once (the memory is mirrored).

    The loss runs on `B + memory_size` samples, so its matrices are
    `(B + M)²`; keep `M` to a few thousand.

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
        self._reduction = None
        self._terms = None

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        if loss is not None and not isinstance(loss, InBatchLoss):
            raise TypeError(
                "`loss` must be an in-batch loss of `tfmetric.losses` (labels, embeddings); got "
                f"{loss!r}."
            )
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        if loss is not None:
            self._reduction = loss.reduction
            self._terms = _loss_terms(loss)

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
        if not training or self._terms is None:
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
        if context is not None:
            labels = distribute.all_gather(context, labels)
            embeddings = distribute.all_gather(context, embeddings)
        self.memory.check_batch_size(embeddings.shape[0])
        values, counts = self.memory_terms(labels, embeddings)
        all_counts = None
        if context is not None:
            all_counts = counts
            values = distribute.local_rows(context, values, local_labels)
            counts = distribute.local_rows(context, counts, local_labels)
        self.memory.enqueue(labels, embeddings)
        # This replica's share of the loss over the (global) batch's terms, as InBatchLoss.
        total = reduction_lib.reduce_terms(
            values, counts, self._reduction, sample_weight, context, all_counts
        )
        for extra in self.losses:
            total = total + self._aggregate_additional_loss(extra)
        return total

    def memory_terms(self, labels, embeddings):
        """Loss terms of a batch against itself and the memory (if full): `(values, counts)`.

        Rows of the batch in the compiled loss' terms evaluated on the batch
        followed by the memory (`[embeddings; memory]`, labels alike): the
        sum of each sample's terms and their number. While the memory is not
        full, the plain in-batch terms.
        """
        size = ops.shape(embeddings)[0]
        memory_labels, memory_embeddings = self.memory()
        all_labels = ops.concatenate([labels, memory_labels], axis=0)
        all_embeddings = ops.concatenate([embeddings, memory_embeddings], axis=0)
        with_values, with_counts = self._terms(all_labels, all_embeddings)
        plain_values, plain_counts = self._terms(labels, embeddings)
        # Both are computed (the batch-only one is the cheap one): a `cond` whose branch
        # holds a loss's `while_loop` has a gradient XLA cannot compile.
        full = self.memory.is_full()
        with_counts = ops.cast(with_counts[:size], "float32")
        plain_counts = ops.cast(plain_counts, "float32")
        return (
            ops.where(full, with_values[:size], plain_values),
            ops.where(full, with_counts, plain_counts),
        )

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
