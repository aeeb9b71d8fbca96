"""Base class of the heads whose trainable class proxies define a loss.

A proxy head holds one (or several) trainable vectors per class. Called on
`(embeddings, labels)` it returns one loss value per sample, whose mean is the
loss; `tfmetric.models.ProxyModel` trains an embedder together with a head.

All heads:

- compute cosines, margins and logits in float32 whatever the input dtype (the
  layer's dtype policy defaults to `"float32"` and it does not autocast), so
  they stay finite under `mixed_float16` / `mixed_bfloat16` at scale 64;
- L2-normalise embeddings and proxies with a guarded norm (a zero embedding has
  a finite value and gradient);
- accept integer labels of shape `(B,)` or `(B, 1)`; labels known at call time
  (eager calls) are checked against `num_classes`. Inside a compiled function
  they cannot be: an out-of-range label then has no target class (its one-hot
  row is zero) and gives a finite but meaningless value.
"""

import keras
import numpy as np
from keras import ops

from tfmetric.losses import batch

_NORM_EPSILON = 1e-12


def check_int(value, name, minimum):
    """Validates an integer argument `>= minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def check_positive(value, name):
    """Validates a number `> 0`."""
    return batch.check_margin(value, name, allow_zero=False)


def l2_normalize(x):
    """Row-wise L2 normalisation with a finite gradient at zero."""
    sq_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(sq_norm, _NORM_EPSILON))


def cross_entropy(logits, one_hot):
    """Per-sample softmax cross-entropy from float32 logits and one-hot targets."""
    return ops.logsumexp(logits, axis=1) - ops.sum(logits * one_hot, axis=1)


def static_value(x):
    """The value of `x` as a numpy array when it is known (eager), else `None`."""
    if isinstance(x, keras.KerasTensor):
        return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # a traced (symbolic) tensor has no value yet
        return None


def prepare_embeddings(embeddings, name="embeddings"):
    """Checks a `(B, D)` floating tensor and upcasts it to float32."""
    embeddings = ops.convert_to_tensor(embeddings)
    if len(embeddings.shape) != 2:
        raise ValueError(
            f"`{name}` must be 2-D of shape (batch, dim); got shape {tuple(embeddings.shape)}."
        )
    dtype = keras.backend.standardize_dtype(embeddings.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(f"`{name}` must be floating-point; got dtype {dtype}.")
    return ops.cast(embeddings, "float32")


@keras.saving.register_keras_serializable(package="tfmetric")
class ProxyHead(keras.layers.Layer):
    """Base of the loss heads holding trainable class proxies.

    Subclasses implement `loss_from_cosine(cosine, one_hot)` on the float32
    `(B, num_classes)` cosine matrix and one-hot labels, returning per-sample
    values `(B,)`. `centers` proxies per class are kept in the weight
    `proxies` of shape `(num_classes * centers, D)`; the cosine of a class is
    the largest over its centers.

    Args:
        num_classes: Number of classes, an integer `>= 2`.
        **kwargs: Keras layer arguments (`name`, `dtype`, ...). `dtype`
            defaults to `"float32"`.

    Call arguments:
        embeddings: Embeddings of shape `(B, D)` (any float dtype).
        labels: Integer class labels in `[0, num_classes)`, shape `(B,)` or
            `(B, 1)`.

    Returns:
        Float32 per-sample loss values of shape `(B,)`.
    """

    centers = 1

    def __init__(self, num_classes, **kwargs):
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        # Variables are read in float32 even inside a mixed-precision model.
        self.autocast = False
        self.num_classes = check_int(num_classes, "num_classes", 2)
        self.proxies = None

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError("`embeddings` must have a known last dimension to build the head.")
        self.proxies = self.add_weight(
            name="proxies",
            shape=(self.num_classes * self.centers, int(dim)),
            initializer="glorot_normal",
            dtype="float32",
        )

    def _prepare(self, embeddings, labels):
        embeddings = prepare_embeddings(embeddings)
        labels = ops.convert_to_tensor(labels)
        dtype = keras.backend.standardize_dtype(labels.dtype)
        if not dtype.startswith(("int", "uint")):
            raise ValueError(
                f"`labels` must hold integer class labels; got dtype {dtype}. "
                "Cast them to int (e.g. `labels.astype('int64')`)."
            )
        if len(labels.shape) == 2 and labels.shape[1] == 1:
            labels = ops.reshape(labels, (-1,))
        if len(labels.shape) != 1:
            raise ValueError(
                f"`labels` must have shape (batch,) or (batch, 1); got {tuple(labels.shape)}."
            )
        batch_size, label_size = embeddings.shape[0], labels.shape[0]
        if batch_size is not None and label_size is not None and batch_size != label_size:
            raise ValueError(
                f"`labels` has {label_size} entries but `embeddings` has {batch_size} rows."
            )
        values = static_value(labels)
        if (
            values is not None
            and values.size
            and (values.min() < 0 or values.max() >= self.num_classes)
        ):
            raise ValueError(
                f"`labels` must lie in [0, {self.num_classes}) (`num_classes`="
                f"{self.num_classes}); got values in [{values.min()}, {values.max()}]."
            )
        embedding_values = static_value(embeddings)
        if embedding_values is not None and not np.all(np.isfinite(embedding_values)):
            raise ValueError("`embeddings` contains NaN or infinite values.")
        return embeddings, ops.one_hot(labels, self.num_classes, dtype="float32")

    def similarities(self, embeddings):
        """Cosine similarities `(B, num_classes)` between embeddings and class proxies.

        With several centers per class, the largest cosine over the class's
        centers. Computed in float32.
        """
        embeddings = prepare_embeddings(embeddings)
        proxies = l2_normalize(ops.cast(self.proxies, "float32"))
        cosine = ops.matmul(l2_normalize(embeddings), ops.transpose(proxies))
        if self.centers > 1:
            cosine = ops.max(ops.reshape(cosine, (-1, self.num_classes, self.centers)), axis=2)
        return ops.clip(cosine, -1.0, 1.0)

    def call(self, embeddings, labels):
        embeddings, one_hot = self._prepare(embeddings, labels)
        return self.loss_from_cosine(self.similarities(embeddings), one_hot)

    def loss_from_cosine(self, cosine, one_hot):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config["num_classes"] = self.num_classes
        return config
