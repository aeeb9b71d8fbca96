"""An embedding model trained through a proxy-based loss head."""

import keras
from keras import ops

from tfmetric._src import inputs

__all__ = ["ProxyModel"]


def _per_sample_losses(head, embeddings, labels):
    """`head(embeddings, labels)` as float32 per-sample values `(B,)`; a clear error otherwise.

    The head contract: one loss value per sample. A head returning logits
    `(B, C)`, a scalar or a different batch would otherwise be averaged into
    a wrong loss without a word.
    """
    values = head(embeddings, labels)
    shape = tuple(getattr(values, "shape", ()))
    batch = embeddings.shape[0]
    if len(shape) != 1 or (shape[0] is not None and batch is not None and shape[0] != batch):
        raise ValueError(
            "`head` must return one loss value per sample, shape (batch,); "
            f"{type(head).__name__} returns shape {shape} for embeddings of shape "
            f"{tuple(embeddings.shape)}."
        )
    return ops.cast(values, "float32")


def _check_class_labels(labels, num_classes, name):
    """Rejects in-memory labels outside `[0, num_classes)` before training.

    Inside the compiled step such a label has no target class (a zero one-hot
    row) and gives a finite, meaningless loss. Datasets and generators are
    left alone (reading them would consume data).
    """
    values = inputs.check_fit_labels(labels, name)
    if values is None or num_classes is None:
        return
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"`{name}` must hold class labels in [0, {num_classes}) (the head's "
            f"`num_classes`); got values in [{values.min()}, {values.max()}]."
        )


@keras.saving.register_keras_serializable(package="tfmetric")
class ProxyModel(keras.Model):
    """An embedder trained with a loss head whose class proxies train with it.

    Calling the model (and `predict`) returns the embeddings; the head is only
    used for the loss, computed in `compute_loss` from the embeddings and the
    labels, so the model trains with `model.fit(x, labels)` after
    `model.compile(optimizer)` (no `loss`: the head is the loss). The loss is
    the mean over the batch of the head's per-sample values (times
    `sample_weight` if given) plus the layers' regularisation losses.
    `model.embedder` is the model to export, without the head.

    The head computes in float32, so a mixed-precision embedder
    (`mixed_float16`, `mixed_bfloat16`) gives finite logits even at scale 64.
    Compiles with `jit_compile=True`.

    Args:
        embedder: A Keras model (or layer) mapping inputs to `(B, D)`
            embeddings. A built functional/sequential model builds the head at
            once; otherwise it is built on the first call.
        head: A head: a Keras layer called as `head(embeddings, labels)`
            that returns per-sample losses `(B,)`, e.g.
            `tfmetric.layers.ArcFace`. Another output shape is a `ValueError`
            at the first training step.
        **kwargs: Keras model arguments (`name`, ...).

    Example:

    >>> import keras
    >>> embedder = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model = tfmetric.models.ProxyModel(embedder, tfmetric.layers.CosFace(num_classes=3))
    >>> model.compile(optimizer="adam", jit_compile=True)
    >>> x = np.random.default_rng(0).normal(size=(12, 8)).astype("float32")
    >>> history = model.fit(x, np.arange(12) % 3, epochs=1, verbose=0)
    >>> model.predict(x, verbose=0).shape
    (12, 4)
    """

    def __init__(self, embedder, head, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(embedder, keras.layers.Layer):
            raise TypeError(
                f"`embedder` must be a Keras model or layer; got {type(embedder).__name__}."
            )
        if not isinstance(head, keras.layers.Layer):
            raise TypeError(
                "`head` must be a Keras layer called as `head(embeddings, labels)` (e.g. "
                f"tfmetric.layers.ArcFace); got {type(head).__name__}."
            )
        self.embedder = embedder
        self.head = head
        outputs = getattr(embedder, "outputs", None) if embedder.built else None
        if outputs:
            if len(outputs) != 1:
                raise ValueError(
                    f"`embedder` must have one output (the embeddings); got {len(outputs)}."
                )
            if not head.built:
                head.build(tuple(outputs[0].shape))
            self.built = True

    def build(self, input_shape):
        if not self.embedder.built:
            self.embedder.build(input_shape)
        if not self.head.built:
            self.head.build(tuple(self.embedder.compute_output_shape(input_shape)))
        self.built = True

    def call(self, inputs, training=None):
        return self.embedder(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        """Configures training; takes no `loss`, the head is the loss.

        Args:
            optimizer: A Keras optimizer or its name. Defaults to `"rmsprop"`.
            loss: Must be `None`.
            **kwargs: Other `keras.Model.compile` arguments (`jit_compile`,
                `steps_per_execution`, ...).
        """
        if loss is not None:
            raise ValueError(
                f"`loss` must be None for a ProxyModel: the head computes the loss; got {loss!r}."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`; in-memory labels outside the head's classes are an error."""
        num_classes = getattr(self.head, "num_classes", None)
        _check_class_labels(y, num_classes, "y")
        validation = kwargs.get("validation_data")
        if isinstance(validation, (tuple, list)) and len(validation) >= 2:
            _check_class_labels(validation[1], num_classes, "validation_data")
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`; in-memory labels outside the head's classes are an error."""
        _check_class_labels(y, getattr(self.head, "num_classes", None), "y")
        return super().evaluate(x, y, *args, **kwargs)

    def compile_from_config(self, config):
        # Keras skips `compile` on load when it is overridden; ours only rejects `loss`.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is None:
            raise ValueError(
                "ProxyModel needs integer class labels `y` to compute its loss: "
                "`model.fit(x, labels)`."
            )
        values = _per_sample_losses(self.head, y_pred, y)
        if sample_weight is not None:
            values = values * ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
        loss = ops.mean(values)
        for extra in self.losses:
            loss = loss + ops.cast(ops.sum(extra), "float32")
        return _scale_for_replicas(loss)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "embedder": keras.saving.serialize_keras_object(self.embedder),
            "head": keras.saving.serialize_keras_object(self.head),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        embedder = keras.saving.deserialize_keras_object(config.pop("embedder"))
        head = keras.saving.deserialize_keras_object(config.pop("head"))
        return cls(embedder, head, **config)


def _scale_for_replicas(loss):
    """Divides by the replica count, as Keras does for its compiled losses.

    Under a `tf.distribute` strategy the replicas' gradients are summed, so
    each replica's mean must be divided by their number for the step to equal
    one device running the global batch.
    """
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss
