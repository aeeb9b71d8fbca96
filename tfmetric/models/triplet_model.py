"""Triplet network: one shared embedding tower applied to anchor, positive and negative."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric.losses.pair import paired_distance
from tfmetric.models.siamese import check_embedder, unpack_inputs

__all__ = ["TripletModel"]

_NAMES = ("anchor", "positive", "negative")


@keras.saving.register_keras_serializable(package="tfmetric")
class TripletModel(keras.Model):
    """Triplet network: the same `embedder` on anchor, positive and negative.

    Called on `(anchor, positive, negative)` batches (a tuple, or a dict with
    those keys), the model returns the stacked embeddings of shape
    `(B, 3, D)`: `output[:, 0]` is `embedder(anchor)`, `output[:, 1]`
    `embedder(positive)` and `output[:, 2]` `embedder(negative)`. Train it with
    `tfmetric.losses.TripletMarginLoss` on batches from `tfmetric.data.triplet_dataset`.

    `model.embedder` is the shared tower. The model saves to `.keras` and loads
    without `custom_objects`.

    Args:
        embedder: A Keras model or layer mapping a batch of inputs to
            embeddings `(B, D)`.
        distance: Name, config or `tfmetric.distances.Distance` used by
            `triplet_distances`. Defaults to `"euclidean"`.
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Example:

    >>> import keras
    >>> embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model = tfmetric.models.TripletModel(embedder)
    >>> model.compile(optimizer="adam")
    >>> a = p = n = np.ones((5, 4))
    >>> tuple(model.predict((a, p, n), verbose=0).shape)
    (5, 3, 2)

    Reference:
        Hoffer and Ailon, "Deep metric learning using Triplet network",
        SIMBAD 2015; Schroff et al., "FaceNet", CVPR 2015.
    """

    def __init__(self, embedder, distance="euclidean", **kwargs):
        super().__init__(**kwargs)
        self._embedder = check_embedder(embedder)
        self.distance = distances_lib.get(distance)

    @property
    def embedder(self):
        """The shared embedding tower."""
        return self._embedder

    def build(self, input_shape):
        shape, _, _ = unpack_inputs(input_shape, 3, _NAMES)
        if not self._embedder.built:
            self._embedder.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        batches = unpack_inputs(inputs, 3, _NAMES)
        return ops.stack([self._embedder(x, training=training) for x in batches], axis=1)

    def triplet_distances(self, inputs):
        """Returns `(d(a, p), d(a, n))`, each `(B,)`, with this model's distance."""
        embeddings = self(inputs, training=False)
        return (
            paired_distance(self.distance, embeddings[:, 0], embeddings[:, 1]),
            paired_distance(self.distance, embeddings[:, 0], embeddings[:, 2]),
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "embedder": keras.saving.serialize_keras_object(self._embedder),
            "distance": distances_lib.serialize(self.distance),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        return cls(**config)
