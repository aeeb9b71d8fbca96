"""Cross-batch memory (XBM): in-batch losses mined against the embeddings of past batches."""

import inspect

import keras
from keras import ops

from tfmetric.layers.cross_batch_memory import CrossBatchMemory
from tfmetric.losses.batch import InBatchLoss

__all__ = ["CrossBatchMemoryModel"]


class _Precomputed(keras.losses.Loss):
    """Reduces per-sample values computed elsewhere, the Keras way (weights, distribution)."""

    def call(self, y_true, y_pred):
        return y_pred


def _loss_function(loss):
    """`fn(labels, embeddings)` computing `loss`'s per-sample values, with its arguments."""
    fn = type(loss).fn
    config = loss.get_config()
    names = set(inspect.signature(fn).parameters) - {"labels", "embeddings", "distance"}
    arguments = {name: config[name] for name in names if name in config}

    def values(labels, embeddings):
        return fn(labels, embeddings, distance=loss.distance, **arguments)

    return values


def _replica_context():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


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
    embeddings (constants: gradients reach the current batch only). The batch
    is then enqueued. The memory joins the loss once it is full
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
        self._reduce = None
        self._values = None

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        if loss is not None and not isinstance(loss, InBatchLoss):
            raise TypeError(
                "`loss` must be an in-batch loss of `tfmetric.losses` (labels, embeddings); got "
                f"{loss!r}."
            )
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        if loss is not None:
            self._reduce = _Precomputed(reduction=loss.reduction, name=loss.name)
            self._values = _loss_function(loss)

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
        if not training or self._values is None:
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
        context = _replica_context()
        if context is not None:
            local = ops.shape(labels)[0]
            labels = context.all_gather(labels, axis=0)
            embeddings = context.all_gather(embeddings, axis=0)
        self.memory.check_batch_size(embeddings.shape[0])
        values = self.memory_values(labels, embeddings)
        if context is not None:
            values = _local_rows(context, values, local, self._reduce.reduction)
        self.memory.enqueue(labels, embeddings)
        total = self._reduce(ops.zeros_like(values), values, sample_weight)
        for extra in self.losses:
            total = total + self._aggregate_additional_loss(extra)
        return total

    def memory_values(self, labels, embeddings):
        """Per-sample loss values of a batch against itself and the memory (if full).

        Row `i` of the compiled loss evaluated on the batch followed by the
        memory (`[embeddings; memory]`, labels alike), for the batch's rows;
        the plain in-batch values while the memory is not full.
        """
        size = ops.shape(embeddings)[0]
        memory_labels, memory_embeddings = self.memory()
        all_labels = ops.concatenate([labels, memory_labels], axis=0)
        all_embeddings = ops.concatenate([embeddings, memory_embeddings], axis=0)
        with_memory = self._values(all_labels, all_embeddings)[:size]
        # Both branches are computed (the batch-only one is the cheap one): a `cond` whose
        # branch holds a loss's `while_loop` has a gradient XLA cannot compile.
        return ops.where(self.memory.is_full(), with_memory, self._values(labels, embeddings))

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


def _local_rows(context, values, local, reduction):
    """This replica's rows of the global batch's values.

    Mean reductions are rescaled by `R * b / G` (R replicas, b local and G
    global samples) so that Keras' per-replica mean, divided by R, sums over
    replicas to the mean over the global batch.
    """
    import tensorflow as tf

    sizes = context.all_gather(tf.reshape(local, [1]), axis=0)
    before = tf.range(context.num_replicas_in_sync) < context.replica_id_in_sync_group
    offset = tf.reduce_sum(tf.where(before, sizes, 0))
    rows = tf.slice(values, [offset], [local])
    if reduction not in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
        return rows
    factor = tf.cast(context.num_replicas_in_sync * local, rows.dtype) / tf.cast(
        tf.reduce_sum(sizes), rows.dtype
    )
    return rows * factor
