"""A ring buffer of past embeddings and labels, kept in (checkpointed) variables."""

import keras
from keras import ops

from tfmetric._src import inputs, validation

__all__ = ["CrossBatchMemory"]


@keras.saving.register_keras_serializable(package="tfmetric")
class CrossBatchMemory(keras.layers.Layer):
    """First-in first-out memory of the last `memory_size` embeddings and their labels.

    The state is three non-trainable weights, saved with the model (`.keras`
    files and `tf.train.Checkpoint`): `embeddings` `(memory_size, dim)`
    float32, `labels` `(memory_size,)` int64 and `count`, the number of
    samples ever enqueued. `enqueue` writes a batch at the slots
    `(count + arange(B)) % memory_size`, overwriting the oldest entries (a
    ring: slot `s` holds the newest sample whose stream position is `s`
    modulo `memory_size`). Under a `tf.distribute` strategy the weights are
    mirrored and written from the first replica's value: every replica must
    enqueue the same (global) batch.

    Args:
        memory_size: Number of embeddings kept (`M`).
        dim: Embedding dimension.
        **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> memory = tfmetric.layers.CrossBatchMemory(memory_size=3, dim=1)
    >>> memory.enqueue(np.array([1, 2]), np.array([[1.0], [2.0]]))
    >>> memory.enqueue(np.array([3, 4]), np.array([[3.0], [4.0]]))
    >>> np.asarray(memory.labels).tolist(), bool(memory.is_full())
    ([4, 2, 3], True)

    Reference:
        Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020.
    """

    def __init__(self, memory_size, dim, **kwargs):
        super().__init__(**kwargs)
        self.memory_size = validation.check_int(memory_size, "memory_size")
        self.dim = validation.check_int(dim, "dim")
        self.embeddings = self.add_weight(
            shape=(self.memory_size, self.dim),
            initializer="zeros",
            dtype="float32",
            trainable=False,
            aggregation="only_first_replica",
            name="embeddings",
        )
        self.labels = self.add_weight(
            shape=(self.memory_size,),
            initializer="zeros",
            dtype="int64",
            trainable=False,
            aggregation="only_first_replica",
            name="labels",
        )
        self.count = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int64",
            trainable=False,
            aggregation="only_first_replica",
            name="count",
        )
        self.built = True

    def check_batch_size(self, batch_size):
        """Raises if a (known) batch of `batch_size` samples cannot fit in the memory."""
        if batch_size is not None and batch_size > self.memory_size:
            raise ValueError(
                f"`memory_size` ({self.memory_size}) must be at least the (global) batch size "
                f"({batch_size}): each step enqueues the whole batch."
            )

    def is_full(self):
        """Whether every slot holds an enqueued sample."""
        return ops.greater_equal(self.count, self.memory_size)

    def enqueue(self, labels, embeddings):
        """Writes a batch into the memory, replacing the oldest entries.

        Args:
            labels: Integer class labels, shape `(B,)` or `(B, 1)`.
            embeddings: Floating-point embeddings, shape `(B, dim)`.

        Raises:
            ValueError: naming `embeddings` or `labels` for a wrong shape or
                dtype, a batch larger than the memory, labels and embeddings of
                different lengths, or (in eager calls) NaN/Inf embeddings or
                non-integer labels.
        """
        labels = inputs.check_host_labels(labels, "labels")
        embeddings = ops.convert_to_tensor(inputs.check_host_numbers(embeddings, "embeddings"))
        if len(embeddings.shape) != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(
                f"`embeddings` must have shape (batch, {self.dim}); got {tuple(embeddings.shape)}."
            )
        embeddings = ops.stop_gradient(inputs.check_embeddings(embeddings, "embeddings"))
        labels = inputs.check_labels(labels, "labels", embeddings.shape[0], "embeddings")
        labels = ops.cast(labels, "int64")
        self.check_batch_size(embeddings.shape[0])
        size = ops.shape(embeddings)[0]
        slots = ops.mod(self.count + ops.arange(size, dtype="int64"), self.memory_size)
        slots = ops.expand_dims(slots, 1)
        self.embeddings.assign(ops.scatter_update(self.embeddings, slots, embeddings))
        self.labels.assign(ops.scatter_update(self.labels, slots, labels))
        self.count.assign(self.count + ops.cast(size, "int64"))

    def call(self, inputs=None):
        """Returns the memory `(labels, embeddings)`."""
        labels, embeddings = ops.convert_to_tensor(self.labels), ops.convert_to_tensor(self.embeddings)
        if keras.backend.backend() == "torch":
            # Snapshots: under PyTorch `enqueue` writes the variables' tensors in place, which
            # autograd refuses for tensors a loss read before the write (MoCo enqueues in its loss).
            labels, embeddings = ops.copy(labels), ops.copy(embeddings)
        return labels, embeddings

    def get_config(self):
        config = super().get_config()
        config.update(memory_size=self.memory_size, dim=self.dim)
        return config
