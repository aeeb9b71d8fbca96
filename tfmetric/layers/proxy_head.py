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
from keras import ops

from tfmetric._src import inputs, numerics, validation
from tfmetric._src.autograph import as_written


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
        self.num_classes = validation.check_int(num_classes, "num_classes", 2)
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
        embeddings = inputs.check_embeddings(embeddings, "embeddings", allow_empty=False)
        labels = inputs.check_labels(labels, "labels", embeddings.shape[0], "embeddings")
        values = inputs.static_value(labels)
        if (
            values is not None
            and values.size
            and (values.min() < 0 or values.max() >= self.num_classes)
        ):
            raise ValueError(
                f"`labels` must lie in [0, {self.num_classes}) (`num_classes`="
                f"{self.num_classes}); got values in [{values.min()}, {values.max()}]."
            )
        return embeddings, ops.one_hot(labels, self.num_classes, dtype="float32")

    def similarities(self, embeddings):
        """Cosine similarities `(B, num_classes)` between embeddings and class proxies.

        With several centers per class, the largest cosine over the class's
        centers. Computed in float32.
        """
        embeddings = inputs.check_embeddings(embeddings, "embeddings")
        dim = embeddings.shape[1]
        if self.proxies is not None and dim is not None and dim != self.proxies.shape[1]:
            raise ValueError(
                f"`embeddings` has embedding size {dim}, but this {type(self).__name__} head was "
                f"built for embeddings of size {self.proxies.shape[1]}."
            )
        proxies = numerics.l2_normalize(ops.cast(self.proxies, "float32"))
        cosine = numerics.matmul(numerics.l2_normalize(embeddings), ops.transpose(proxies))
        if self.centers > 1:
            per_center = ops.reshape(cosine, (-1, self.num_classes, self.centers))
            cosine = numerics.reduced_keeping_nan(ops.max(per_center, axis=2), per_center, axis=2)
        return numerics.clip_keeping_nan(cosine, -1.0, 1.0)

    @as_written
    def __call__(self, embeddings, labels, *args, **kwargs):
        # Labels given as host values are checked before Keras converts them
        # (strings would fail inside the backend, large integers be truncated).
        labels = inputs.check_host_labels(labels, "labels")
        return super().__call__(embeddings, labels, *args, **kwargs)

    def call(self, embeddings, labels):
        embeddings, one_hot = self._prepare(embeddings, labels)
        values = self.loss_from_cosine(self.similarities(embeddings), one_hot)
        # The max over sub-centers and masked sums can drop a NaN embedding;
        # the loss must still be NaN for `TerminateOnNaN`.
        return numerics.nan_unless_finite(values, embeddings)

    def loss_from_cosine(self, cosine, one_hot):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config["num_classes"] = self.num_classes
        return config
