"""MoCo: a query encoder trained against a momentum (EMA) key encoder and a queue of keys."""

import math

import keras
from keras import ops

from tfmetric._src import distribute, validation
from tfmetric._src.autograph import as_written
from tfmetric.layers.cross_batch_memory import CrossBatchMemory
from tfmetric.losses.momentum_contrast import momentum_contrast_loss
from tfmetric.models.checked_labels import CheckedLabelsMixin

__all__ = ["MomentumContrastModel"]


@keras.saving.register_keras_serializable(package="tfmetric")
class MomentumContrastModel(CheckedLabelsMixin, keras.Model):
    """MoCo (v2 loss): a query encoder, its momentum copy and a queue of past keys.

    Trained on two-view batches from `tfmetric.data.multi_view_dataset`
    (`views=2`): the first half of each batch is one view of `B` samples (the
    queries), the second half the other view (the keys) and `y` the sample
    ids. A training step

    1. embeds the queries with `encoder` and the keys with the momentum
       encoder (no gradient);
    2. minimises `momentum_contrast_loss` of the queries against their keys
       and the queue (queued keys of the same sample id are left out);
    3. after the optimizer step, moves every momentum weight to
       `momentum * momentum_weight + (1 - momentum) * encoder_weight`;
    4. enqueues the keys (and ids) in a `tfmetric.layers.CrossBatchMemory` of
       `queue_size` slots (saved with the model).

    It is a functional model of `encoder`: `predict` returns query
    embeddings. `compile` needs no loss. Runs with `jit_compile=True`, under
    TensorFlow and under JAX (Keras' stateless `train_step`: the momentum
    update and the enqueue return the new state of the momentum weights and
    the queue).

    Under a `tf.distribute` strategy (as MoCo's own multi-GPU code), each
    replica holds a slice of the global batch `[queries; keys]`: it embeds
    its rows with both encoders, all-gathers the momentum keys and ids, and
    scores its own queries against their keys and the queue; the loss is
    the mean over the global batch's queries (each replica returns its
    share), so training matches one device on the global batch. Every
    replica then enqueues the global batch's keys once, and the momentum
    update runs on every replica's copy of the (mirrored) weights.

    Args:
        encoder: Keras model with one defined input, mapping inputs to `(B, D)`.
        queue_size: Number of queued keys (`>=` the batch size `B`). Defaults
            to `4096`.
        momentum: EMA coefficient in `[0, 1)`. Defaults to `0.999`.
        temperature: Positive temperature. Defaults to `0.07`.
        **kwargs: Passed to `keras.Model`.

    Example:

    >>> import keras
    >>> encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model = tfmetric.models.MomentumContrastModel(encoder, queue_size=8, momentum=0.9)
    >>> model.compile(optimizer="sgd")
    >>> x, ids = np.random.rand(8, 4).astype("float32"), np.tile(np.arange(4), 2)
    >>> _ = model.fit(x, ids, batch_size=8, epochs=1, verbose=0)
    >>> int(model.queue.count.numpy())
    4

    Reference:
        He et al., "Momentum Contrast for Unsupervised Visual Representation
        Learning", CVPR 2020; Chen et al., "Improved Baselines with Momentum
        Contrastive Learning", 2020.
    """

    def __init__(self, encoder, queue_size=4096, momentum=0.999, temperature=0.07, **kwargs):
        if not isinstance(encoder, keras.Model):
            raise TypeError(
                "`encoder` must be a Keras model with a defined input (built from "
                f"`keras.Input`); got {type(encoder).__name__}."
            )
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not (
            0 <= momentum < 1
        ):
            raise ValueError(f"`momentum` must be a number in [0, 1); got {momentum!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            temperature > 0 and math.isfinite(temperature)
        ):
            raise ValueError(f"`temperature` must be > 0 and finite; got {temperature!r}.")
        try:
            spec = encoder.inputs[0] if len(encoder.inputs) == 1 else None
        except (AttributeError, ValueError):
            spec = None
        if spec is None:
            raise ValueError("`encoder` must have exactly one defined input (`keras.Input`).")
        inputs = keras.Input(tuple(spec.shape[1:]), dtype=spec.dtype, name="inputs")
        outputs = encoder(inputs)
        if len(outputs.shape) != 2 or outputs.shape[-1] is None:
            raise ValueError(
                f"`encoder` must output embeddings of shape (batch, dim); got {outputs.shape}."
            )
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.encoder = encoder
        self.queue_size = validation.check_int(queue_size, "queue_size")
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.momentum_encoder = keras.models.clone_model(encoder)
        self.momentum_encoder.trainable = False
        for target, source in zip(self.momentum_encoder.weights, encoder.weights, strict=True):
            target.assign(ops.copy(source))  # own buffers (JAX donates the state)
        self.queue = CrossBatchMemory(self.queue_size, outputs.shape[-1], name="queue")

    def _split(self, x, y):
        size = ops.shape(x)[0] // 2
        if x.shape[0] is not None and x.shape[0] % 2:
            raise ValueError(
                f"A MoCo batch holds two views of each sample (queries then keys); got an odd "
                f"batch of {x.shape[0]}."
            )
        ids = None if y is None else ops.reshape(ops.cast(y, "int64"), (-1,))[:size]
        return x[size:], ids, size

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        context = distribute.replica_context()
        if context is not None:
            loss = self._replica_loss(context, x, y, y_pred, training)
        else:
            loss = self._loss(x, y, y_pred, training)
        for extra in self.losses:
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def _loss(self, x, y, y_pred, training):
        keys_input, ids, size = self._split(x, y)
        self.queue.check_batch_size(None if x.shape[0] is None else x.shape[0] // 2)
        queries = y_pred[:size]
        keys = self.momentum_encoder(keys_input, training=False)
        queue_ids, queue = self.queue()
        valid = ops.less(ops.arange(self.queue_size, dtype="int64"), self.queue.count)
        values = momentum_contrast_loss(
            queries, keys, queue, self.temperature, ids, queue_ids, valid
        )
        if training:
            # Read above, written here: the next step sees this batch's keys.
            self.queue.enqueue(ids if ids is not None else ops.full((size,), -1, "int64"), keys)
        return ops.mean(values)

    def _replica_loss(self, context, x, y, y_pred, training):
        """This replica's share of the loss over the global batch `[queries; keys]`.

        The replica holds global rows `offset ... offset + n - 1`; rows below
        `B` (half the global batch) are queries, row `B + i` is the key of
        query `i`.
        """
        import tensorflow as tf

        local = ops.shape(x)[0]
        sizes = distribute.all_gather(context, tf.reshape(local, [1]))
        total = ops.sum(sizes)
        before = tf.range(context.num_replicas_in_sync) < context.replica_id_in_sync_group
        offset = tf.reduce_sum(tf.where(before, sizes, 0))
        half = total // 2
        # Every row through the momentum encoder (the key rows are another replica's too).
        keys = distribute.all_gather(
            context, ops.cast(self.momentum_encoder(x, training=False), "float32")
        )
        keys = ops.stop_gradient(keys)
        if y is None:
            ids = queue_batch_ids = None
        else:
            all_ids = distribute.all_gather(context, ops.reshape(ops.cast(y, "int64"), (-1,)))
            queue_batch_ids = all_ids[:half]
        rows = offset + ops.arange(local, dtype=offset.dtype)
        is_query = ops.less(rows, half)
        partner = ops.where(is_query, rows + half, rows)  # the row's key (itself for key rows)
        if y is not None:
            ids = ops.take(all_ids, rows)
        queue_ids, queue = self.queue()
        valid = ops.less(ops.arange(self.queue_size, dtype="int64"), self.queue.count)
        values = momentum_contrast_loss(
            y_pred, ops.take(keys, partner, axis=0), queue, self.temperature, ids, queue_ids,
            valid,
        )
        if x.shape[0] is not None:
            # The global batch's keys must fit in the queue (each replica holds a shard).
            self.queue.check_batch_size(x.shape[0] * context.num_replicas_in_sync // 2)
        if training:
            batch_keys = keys[half:]
            if queue_batch_ids is None:
                queue_batch_ids = ops.full((ops.shape(batch_keys)[0],), -1, "int64")
            self.queue.enqueue(queue_batch_ids, batch_keys)
        # The mean over the global batch's queries: this replica's share.
        return ops.divide_no_nan(
            ops.sum(ops.where(is_query, values, 0.0)), ops.cast(half, "float32")
        )

    @as_written
    def train_step(self, *args):
        if keras.backend.backend() == "jax":
            return self._stateless_train_step(*args)
        (data,) = args
        logs = super().train_step(data)
        self._momentum_update()
        return logs

    def _stateless_train_step(self, state, data):
        """JAX's stateless step: Keras' own step, then the momentum update on the new state.

        Keras' step (`jax.value_and_grad` of `stateless_call` and the loss, then the
        optimizer's `stateless_apply`) returns the new variables; the queue's enqueue
        in `compute_loss` is among its non-trainable ones. `_momentum_update` then
        runs in a `keras.StatelessScope` over that state, so its `assign`s (the same
        code as TensorFlow's path) give the momentum weights' new values, which go
        back in the state.
        """
        logs, state = super().train_step(state, data)
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        mapping = list(zip(self.trainable_variables, trainable, strict=True))
        mapping += list(zip(self.non_trainable_variables, non_trainable, strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self._momentum_update()
        non_trainable = [
            scope.get_current_value(variable) for variable in self.non_trainable_variables
        ]
        return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)

    def _ema(self, target, source):
        """A momentum weight's next value: `m * target + (1 - m) * source` (He et al., Eq. 2)."""
        m = self.momentum
        return m * target + (1.0 - m) * ops.cast(source, target.dtype)

    def _momentum_update(self):
        """Moves every momentum weight towards the encoder's, on every replica's copy."""
        pairs = list(zip(self.momentum_encoder.weights, self.encoder.weights, strict=True))
        context = distribute.replica_context()
        if context is None:
            for target, source in pairs:
                target.assign(self._ema(target, source))
            return

        def assign_ema(target, source):
            return target.assign(self._ema(target, source))

        def update(strategy):
            # Cross-replica context: each device's copy moves towards that device's copy of
            # the encoder weights (identical after the optimizer's all-reduced step).
            for target, source in pairs:
                strategy.extended.update(
                    target.value, assign_ema, args=(source.value,), group=False
                )

        context.merge_call(update)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "queue_size": self.queue_size,
            "momentum": self.momentum,
            "temperature": self.temperature,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
