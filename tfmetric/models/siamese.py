"""Siamese network: one shared embedding tower applied to the two inputs of a pair."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric.losses.pair import paired_distance

__all__ = ["SiameseModel"]


def check_embedder(embedder):
    if not isinstance(embedder, keras.layers.Layer):
        raise TypeError(
            "`embedder` must be a Keras model or layer that maps inputs to embeddings; "
            f"got {type(embedder).__name__}."
        )
    return embedder


def unpack_inputs(inputs, count, names):
    if isinstance(inputs, dict):
        missing = [name for name in names if name not in inputs]
        if missing:
            raise ValueError(f"`inputs` dict must have the keys {list(names)}; missing {missing}.")
        return [inputs[name] for name in names]
    if not isinstance(inputs, (list, tuple)) or len(inputs) != count:
        raise ValueError(
            f"`inputs` must be a tuple of {count} batches ({', '.join(names)}); got "
            f"{type(inputs).__name__}"
            + (f" of length {len(inputs)}." if isinstance(inputs, (list, tuple)) else ".")
        )
    return list(inputs)


def _squeeze_pair_values(values):
    if len(values.shape) == 2 and values.shape[-1] == 1:
        return ops.squeeze(values, axis=-1)
    if len(values.shape) != 1:
        raise ValueError(
            "`head` must return one value per pair, shape (batch,) or (batch, 1); got shape "
            f"{tuple(values.shape)}."
        )
    return values


@keras.saving.register_keras_serializable(package="tfmetric")
class SiameseModel(keras.Model):
    """Siamese network: the same `embedder` (shared weights) on both inputs of a pair.

    Called on `(x1, x2)`, the model embeds both batches with the one tower and
    returns one value per pair, shape `(B,)`:

    - without `head`: the distance `d(embedder(x1), embedder(x2))` (a
      similarity for similarity "distances" such as `"inner_product"`). Train
      it with `tfmetric.losses.PairContrastiveLoss` on `((x1, x2), same)` batches from
      `tfmetric.data.pair_dataset`, where **`same` = 1 for similar pairs**.
    - with `head`: `head(embedder(x1), embedder(x2))`, for instance a learned
      weighted L1 distance followed by a sigmoid (Koch et al. 2015) giving the
      probability that the pair is similar, trained with
      `keras.losses.BinaryCrossentropy()` on the same labels. Any Keras layer called
      on two embedding batches and returning `(B,)` or `(B, 1)` works.

    `model.embedder` is the shared tower: use it to embed single inputs for
    retrieval. The model saves to `.keras` and loads without `custom_objects`.

    Args:
        embedder: A Keras model or layer mapping a batch of inputs to
            embeddings `(B, D)`.
        distance: Name, config or `tfmetric.distances.Distance` used without
            a head. Defaults to `"euclidean"`.
        head: Optional Keras layer `head(e1, e2) -> (B,)` replacing the
            distance. Defaults to `None`.
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Example:

    >>> import keras
    >>> embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model = tfmetric.models.SiameseModel(embedder)
    >>> model.compile(optimizer="adam")
    >>> x1, x2 = np.ones((3, 4)), np.zeros((3, 4))
    >>> tuple(model.predict((x1, x2), verbose=0).shape)
    (3,)

    Reference:
        Bromley et al., "Signature Verification using a Siamese Time Delay
        Neural Network", NeurIPS 1993; Koch, Zemel and Salakhutdinov, "Siamese
        Neural Networks for One-shot Image Recognition", ICML Deep Learning
        Workshop 2015.
    """

    def __init__(self, embedder, distance="euclidean", head=None, **kwargs):
        super().__init__(**kwargs)
        self._embedder = check_embedder(embedder)
        self.distance = distances_lib.get(distance)
        if head is not None and not isinstance(head, keras.layers.Layer):
            raise TypeError(f"`head` must be a Keras layer or None; got {type(head).__name__}.")
        self.head = head

    @property
    def embedder(self):
        """The shared embedding tower."""
        return self._embedder

    def build(self, input_shape):
        shape1, _ = unpack_inputs(input_shape, 2, ("x1", "x2"))
        if not self._embedder.built:
            self._embedder.build(shape1)
        if self.head is not None and not self.head.built:
            # Heads may build from `build(shape)` or from their first call; a call always works.
            embedding_shape = self._embedder.compute_output_shape(shape1)
            probe = ops.zeros((1, *embedding_shape[1:]))
            self.head(probe, probe)
        self.built = True

    def call(self, inputs, training=None):
        x1, x2 = unpack_inputs(inputs, 2, ("x1", "x2"))
        e1 = self._embedder(x1, training=training)
        e2 = self._embedder(x2, training=training)
        if self.head is None:
            return paired_distance(self.distance, e1, e2)
        return _squeeze_pair_values(self.head(e1, e2))

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(
            embedder=keras.saving.serialize_keras_object(self._embedder),
            distance=distances_lib.serialize(self.distance),
            head=None if self.head is None else keras.saving.serialize_keras_object(self.head),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        if config.get("head") is not None:
            config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)
