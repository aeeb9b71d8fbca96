"""MoCo: a query encoder trained against a momentum (EMA) key encoder and a queue of keys."""

import math

import keras
from keras import ops

from tfmetric._src import validation
from tfmetric.layers.cross_batch_memory import CrossBatchMemory
from tfmetric.losses.momentum_contrast import momentum_contrast_loss

__all__ = ["MomentumContrastModel"]


def _check_one_replica():
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    if tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        raise ValueError(
            "`MomentumContrastModel` trains on one replica; its momentum update and queue are "
            "not mirrored across replicas (use it outside a multi-replica `tf.distribute` "
            "strategy)."
        )


@keras.saving.register_keras_serializable(package="tfmetric")
class MomentumContrastModel(keras.Model):
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
    embeddings. `compile` needs no loss. Runs with `jit_compile=True`; one
    replica (no `tf.distribute` strategy).

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
            target.assign(source)
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
        _check_one_replica()
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
        loss = ops.mean(values)
        for extra in self.losses:
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def train_step(self, data):
        logs = super().train_step(data)
        m = self.momentum
        for target, source in zip(self.momentum_encoder.weights, self.encoder.weights,
                                  strict=True):
            target.assign(m * target + (1.0 - m) * ops.cast(source, target.dtype))
        return logs

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
