"""Scaled query-candidate similarities of a batch, with a learnable temperature."""

import math

import keras
from keras import ops

from tfmetric._src import inputs, numerics, validation

__all__ = ["InBatchLogits"]


@keras.saving.register_keras_serializable(package="tfmetric")
class InBatchLogits(keras.layers.Layer):
    """`logits[i, j] = s(q_i, c_j) / temperature - log Q_j` for a batch of pairs.

    Called on query embeddings `(B, D)` and candidate embeddings `(B, D)`
    (and, optionally, the candidates' log sampling probabilities `(B,)`), it
    returns the `(B, B)` logits of `tfmetric.losses.InBatchSoftmaxLoss`. The
    similarity is the cosine (`normalize=True`) or the inner product.

    With `learn_temperature=True` the layer learns `log(1 / temperature)`
    (CLIP's logit scale), clamped so that `1 / temperature` never exceeds
    `max_logit_scale` (100 in CLIP, which keeps training stable).

    Args:
        temperature: Positive (initial) temperature. Defaults to `0.07`.
        learn_temperature: Whether the temperature is a trainable weight.
            Defaults to `True`.
        max_logit_scale: Largest `1 / temperature` (`>= 1 / temperature`).
            Defaults to `100.0`.
        normalize: L2-normalise both embeddings (cosine similarity). Defaults
            to `True`.
        **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> layer = tfmetric.layers.InBatchLogits(temperature=0.5, learn_temperature=False)
    >>> q = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> np.asarray(layer(q, q)).tolist()
    [[2.0, 0.0], [0.0, 2.0]]

    Reference:
        Radford et al., "Learning Transferable Visual Models From Natural
        Language Supervision", ICML 2021.
    """

    def __init__(
        self,
        temperature=0.07,
        learn_temperature=True,
        max_logit_scale=100.0,
        normalize=True,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = validation.check_positive(temperature, "temperature")
        self.max_logit_scale = validation.check_positive(max_logit_scale, "max_logit_scale")
        if 1.0 / self.temperature > self.max_logit_scale * (1 + 1e-6):
            raise ValueError(
                f"`max_logit_scale` ({max_logit_scale}) must be >= 1 / `temperature` "
                f"({1.0 / self.temperature:g})."
            )
        for name, value in (("learn_temperature", learn_temperature), ("normalize", normalize)):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be a bool; got {value!r}.")
        self.learn_temperature = learn_temperature
        self.normalize = normalize
        self.log_logit_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(math.log(1.0 / self.temperature)),
            trainable=learn_temperature,
            name="log_logit_scale",
        )

    def logit_scale(self):
        """`1 / temperature` after the clamp."""
        return ops.exp(ops.minimum(self.log_logit_scale, math.log(self.max_logit_scale)))

    def call(self, query, candidate, candidate_log_probability=None):
        if len(query.shape) != 2 or len(candidate.shape) != 2:
            raise ValueError(
                "`query` and `candidate` must be embeddings of shape (batch, dim); got "
                f"{tuple(query.shape)} and {tuple(candidate.shape)}."
            )
        rows, cols = query.shape[0], candidate.shape[0]
        if rows is not None and cols is not None and rows != cols:
            raise ValueError(
                f"The batch has {rows} queries but {cols} candidates; a two-tower batch holds "
                "(query, candidate) pairs, so the sizes must match."
            )
        inputs.check_same_dim(query, candidate, "query", "candidate")
        query = ops.cast(query, "float32")
        candidate = ops.cast(candidate, "float32")
        if self.normalize:
            query = numerics.l2_normalize(query)
            candidate = numerics.l2_normalize(candidate)
        logits = numerics.matmul(query, ops.transpose(candidate)) * self.logit_scale()
        if candidate_log_probability is not None:
            log_q = inputs.check_vector(
                candidate_log_probability, "candidate_log_probability", cols, integer=False
            )
            logits = logits - ops.reshape(log_q, (1, -1))
        return logits

    def compute_output_shape(self, query_shape, candidate_shape, *args):
        return (query_shape[0], candidate_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature,
            learn_temperature=self.learn_temperature,
            max_logit_scale=self.max_logit_scale,
            normalize=self.normalize,
        )
        return config
