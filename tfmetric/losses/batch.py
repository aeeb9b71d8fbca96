"""Shared pieces of in-batch metric losses: input checks, label masks, base class.

In-batch losses take integer class labels `y_true` of shape `(B,)` or `(B, 1)`
and embeddings `y_pred` of shape `(B, D)`. Every pair of samples with the same
label is a positive pair (a sample is never its own positive), every pair with
different labels a negative pair.
"""

import keras
from keras import ops

from tfmetric import distances as distances_lib


def check_margin(value, name="margin", allow_zero=True):
    """Validates a finite, non-negative (or positive) float argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number; got {value!r}.")
    if value == float("inf"):
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    if value < 0 or (not allow_zero and value == 0) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be {bound}; got {value!r}.")
    return float(value)


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}.")
    return value


def prepare_labels_and_embeddings(labels, embeddings):
    """Validates and standardises `(labels, embeddings)`.

    Returns:
        `(labels, embeddings)`: int32-or-int64 labels of shape `(B,)` and float32
        embeddings of shape `(B, D)`.

    Raises:
        ValueError: naming `y_true` or `y_pred` for wrong ranks, lengths or
            dtypes, where shapes are known.
    """
    embeddings = ops.convert_to_tensor(embeddings)
    if len(embeddings.shape) != 2:
        raise ValueError(
            "`y_pred` must be 2-D embeddings of shape (batch, dim); got shape "
            f"{tuple(embeddings.shape)}."
        )
    labels = ops.convert_to_tensor(labels)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if not (dtype.startswith("int") or dtype.startswith("uint")):
        raise ValueError(
            "`y_true` must hold integer class labels; got dtype "
            f"{dtype}. Cast your labels to int (e.g. `labels.astype('int64')`)."
        )
    if len(labels.shape) == 2 and labels.shape[1] == 1:
        labels = ops.reshape(labels, (-1,))
    if len(labels.shape) != 1:
        raise ValueError(
            "`y_true` must be integer labels of shape (batch,) or (batch, 1); got "
            f"shape {tuple(labels.shape)}."
        )
    batch, label_batch = embeddings.shape[0], labels.shape[0]
    if batch is not None and label_batch is not None and batch != label_batch:
        raise ValueError(
            f"`y_true` has {label_batch} labels but `y_pred` has {batch} embeddings; "
            "they must match."
        )
    embed_dtype = keras.backend.standardize_dtype(embeddings.dtype)
    if not embed_dtype.startswith(("float", "bfloat")):
        raise ValueError(f"`y_pred` must be floating-point embeddings; got dtype {embed_dtype}.")
    if batch == 0:
        raise ValueError("`y_pred` is empty (batch size 0); an in-batch loss needs samples.")
    embeddings = ops.cast(embeddings, "float32")
    if _is_eager(embeddings) and not bool(ops.all(ops.isfinite(embeddings))):
        raise ValueError("`y_pred` contains NaN or infinite values.")
    return labels, embeddings


def _is_eager(x):
    """Whether `x` holds a value (eager call) rather than a traced tensor.

    Values are only checked eagerly: a traced training step cannot raise, and
    Keras' `TerminateOnNaN` covers it.
    """
    if isinstance(x, keras.KerasTensor) or keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.executing_eagerly()


def label_masks(labels):
    """Returns boolean `(positive, negative)` masks of shape `(B, B)`.

    `positive[i, j]` is true when `i != j` share a label; `negative[i, j]` when
    their labels differ.
    """
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    not_self = ops.logical_not(ops.eye(ops.shape(labels)[0], dtype="bool"))
    return ops.logical_and(same, not_self), ops.logical_not(same)


def pairwise_dissimilarity(distance, embeddings):
    """In-batch distance matrix oriented so that smaller means closer.

    Similarities (`distance.is_similarity`) are negated, so a loss written for
    distances serves them too: a margin `m` on `d(a, p) - d(a, n)` becomes a
    margin on `s(a, n) - s(a, p)`.
    """
    matrix = distance(embeddings)
    return -matrix if distance.is_similarity else matrix


def first_occurrence_ids(labels):
    """Maps labels to the index of the first sample holding the same label.

    The result lies in `[0, B)`, so it survives Keras' cast of `y_true` to
    float32 exactly, whatever the magnitude of the original label values.
    """
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    return ops.argmax(ops.cast(same, "int32"), axis=1)


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
        if not isinstance(cross_replica, bool):
            raise TypeError(f"`cross_replica` must be a bool; got {cross_replica!r}.")
        self.cross_replica = cross_replica

    def __call__(self, y_true, y_pred, sample_weight=None):
        labels, _ = prepare_labels_and_embeddings(_build_time_labels(y_true), y_pred)
        context = self._replica_context()
        if context is None:
            ids = first_occurrence_ids(labels)
        else:
            ids = _local_rows(context, first_occurrence_ids(_all_gather(context, labels)), labels)
        return super().__call__(ids, y_pred, sample_weight)

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")
        context = self._replica_context()
        if context is None:
            return type(self).fn(labels, y_pred, distance=self.distance, **self._call_arguments())
        embeddings = ops.cast(y_pred, "float32")
        values = type(self).fn(
            _all_gather(context, labels),
            _all_gather(context, embeddings),
            distance=self.distance,
            **self._call_arguments(),
        )
        mean = self.reduction in ("sum_over_batch_size", "mean", "mean_with_sample_weight")
        return _local_rows(context, values, labels, rescale=mean)

    def _replica_context(self):
        """The replica context to gather over, or `None` for per-replica mining."""
        if not self.cross_replica or keras.backend.backend() != "tensorflow":
            return None
        import tensorflow as tf

        if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
            return None
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return None
        return context

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


def _build_time_labels(y_true):
    """Integer labels for Keras' symbolic build under a `tf.distribute` strategy.

    `Model.fit` under a strategy builds the compiled loss, in the cross-replica
    context, on the replica-MEAN of the first batch, which turns integer labels
    into floats; the value is discarded. Only that call is let through, with
    the labels cast back; training steps run in the replica context and still
    reject float labels.
    """
    if keras.backend.backend() != "tensorflow":
        return y_true
    import tensorflow as tf

    if not (tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context()):
        return y_true
    y_true = ops.convert_to_tensor(y_true)
    if keras.backend.standardize_dtype(y_true.dtype).startswith(("float", "bfloat")):
        return ops.cast(y_true, "int32")
    return y_true


def _all_gather(context, value):
    """Concatenates `value` of every replica along axis 0 (differentiable).

    The all-gather sends each value to the device it lives on; a tensor
    traced without one (`MultiWorkerMirroredStrategy` with one device per
    worker traces the replica function outside any device scope) is first
    placed on the worker's device.
    """
    import tensorflow as tf

    devices = context.strategy.extended.worker_devices
    if not value.device and len(devices) == 1:
        with tf.device(devices[0]):
            value = tf.identity(value)
    return context.all_gather(value, axis=0)


def _local_rows(context, values, local, rescale=False):
    """The rows of `values` (global batch) that belong to this replica.

    `local` is any tensor with this replica's batch size as its first
    dimension. Replicas may hold different batch sizes (a last, partial
    batch); with `rescale=True` (mean reductions) the rows are multiplied by
    `R * b / G` (R replicas, b local and G global samples) so that Keras'
    per-replica mean, divided by R for the distribution, sums over replicas to
    the global mean. Sums need no scaling.
    """
    import tensorflow as tf

    size = tf.shape(local)[0]
    sizes = _all_gather(context, tf.reshape(size, [1]))
    before = tf.range(context.num_replicas_in_sync) < context.replica_id_in_sync_group
    offset = tf.reduce_sum(tf.where(before, sizes, 0))
    rows = tf.slice(values, [offset], [size])
    if not rescale:
        return rows
    factor = tf.cast(context.num_replicas_in_sync * size, rows.dtype) / tf.cast(
        tf.reduce_sum(sizes), rows.dtype
    )
    return rows * factor


def pairwise_similarity(distance, embeddings):
    """In-batch similarity matrix oriented so that larger means closer.

    Similarities are returned as they are; a distance `d` becomes `1 - d`,
    which is exactly the cosine similarity for `"cosine"` and keeps thresholds
    such as multi-similarity's `base` or circle loss' margins meaningful for
    other distances on normalised embeddings. Softmax-based losses are
    unaffected by the constant shift.
    """
    matrix = distance(embeddings)
    return matrix if distance.is_similarity else 1.0 - matrix


def masked_logsumexp(x, mask, axis=1, add_one=False):
    """`log(sum(exp(x)))` over the entries where `mask` is true.

    With `add_one=True` it is `log(1 + sum(exp(x)))`, a smooth `max(0, ...)`.
    A row where `mask` is all false gives 0 (the empty-sum case is left to the
    caller to mask out) with a zero gradient, never NaN or Inf: masked entries
    never reach `exp` and the shift by the row maximum is a constant.
    """
    masked = ops.where(mask, x, -float("inf"))
    shift = ops.max(masked, axis=axis, keepdims=True)
    shift = ops.where(ops.isfinite(shift), shift, 0.0)
    if add_one:
        shift = ops.maximum(shift, 0.0)
    shift = ops.stop_gradient(shift)
    total = ops.sum(ops.exp(ops.where(mask, x - shift, -float("inf"))), axis=axis, keepdims=True)
    if add_one:
        total = total + ops.exp(-shift)
    nonempty = ops.greater(total, 0.0)
    value = ops.where(nonempty, ops.log(ops.where(nonempty, total, 1.0)) + shift, 0.0)
    return ops.squeeze(value, axis=axis)


def mean_over(values, valid):
    """Per-sample values whose batch mean is the mean of `values` over `valid`.

    Keras reduces a loss by averaging per-sample values over the batch; scaling
    the valid entries by `B / count(valid)` (and zeroing the rest) turns that
    average into the mean over the valid anchors, e.g. those with a positive.
    """
    size = ops.cast(ops.shape(values)[0], "float32")
    count = ops.sum(ops.cast(valid, "float32"))
    return ops.where(valid, values, 0.0) * size / ops.maximum(count, 1.0)
