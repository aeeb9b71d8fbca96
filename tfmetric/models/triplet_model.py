"""Triplet network: one shared embedding tower applied to anchor, positive and negative."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric.losses.pair_contrastive import paired_distance
from tfmetric.models import shared_tower

__all__ = ["TripletModel"]

_NAMES = ("anchor", "positive", "negative")


@keras.saving.register_keras_serializable(package="tfmetric")
class TripletModel(keras.Model):
    """Triplet network: the same `embedder` on anchor, positive and negative.

    A functional model (like keras-hub's task models): three `keras.Input`s
    `anchor`, `positive` and `negative`, the one `embedder` called on each,
    and the three embeddings stacked. `summary()` and `keras.utils.plot_model`
    show the shared tower with its three inbound connections. Called on
    `(anchor, positive, negative)` batches (a list/tuple, or a dict with those
    keys), the model returns the stacked embeddings of shape `(B, 3, D)`:
    `output[:, 0]` is `embedder(anchor)`, `output[:, 1]` `embedder(positive)`
    and `output[:, 2]` `embedder(negative)`. Train it with
    `tfmetric.losses.TripletMarginLoss` on batches from
    `tfmetric.data.triplet_dataset`.

    The input shape and dtype come from the embedder's own `keras.Input`;
    for a subclassed embedder or a bare layer, give `input_shape` (and
    `input_dtype`).

    Attributes:
        embedder: The shared tower.
        distance: The `tfmetric.distances.Distance` of `triplet_distances`
            (and of the exported embedder).

    The model saves to `.keras` and loads without `custom_objects`, with
    `safe_mode=True`.

    Args:
        embedder: A Keras model or layer mapping a batch of inputs to
            embeddings `(B, D)`.
        distance: Name, config or `tfmetric.distances.Distance` used by
            `triplet_distances`. Defaults to `"euclidean"`.
        input_shape: Shape of one input sample, without the batch axis.
            Defaults to `None`: the embedder's input shape.
        input_dtype: Dtype of the inputs. Defaults to `None`: the embedder's
            input dtype, else `"float32"`.
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Example:

    >>> import keras
    >>> embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model = tfmetric.models.TripletModel(embedder)
    >>> model.compile(optimizer="adam")
    >>> a = p = n = np.ones((5, 4))
    >>> tuple(model.predict([a, p, n], verbose=0).shape)
    (5, 3, 2)

    Reference:
        Hoffer and Ailon, "Deep metric learning using Triplet network",
        SIMBAD 2015; Schroff et al., "FaceNet", CVPR 2015.
    """

    def __init__(self, embedder, distance="euclidean", input_shape=None, input_dtype=None, **kwargs):
        # === Layers ===
        embedder = shared_tower.check_embedder(embedder)
        distance = distances_lib.get(distance)
        shape, dtype = shared_tower.input_spec(embedder, input_shape, input_dtype)

        # === Functional model ===
        inputs = shared_tower.branch_inputs(_NAMES, shape, dtype)
        embeddings = ops.stack([embedder(x) for x in inputs], axis=1)
        super().__init__(inputs=inputs, outputs=embeddings, **kwargs)

        # === Config ===
        self.embedder = embedder
        self.distance = distance
        self._input_shape_arg = None if input_shape is None else tuple(input_shape)
        self._input_dtype_arg = input_dtype

    def call(self, inputs, training=None, mask=None, **kwargs):
        inputs = shared_tower.unpack_inputs(inputs, _NAMES)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    def _check_x(self, x):
        shared_tower.check_branch_data(x, _NAMES, self.inputs[0].shape[1:], "x")

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`; `x` must hold the three batches (anchor, positive, negative)."""
        self._check_x(x)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`; `x` must hold the three batches."""
        self._check_x(x)
        return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`; `x` must hold the three batches."""
        self._check_x(x)
        return super().predict(x, *args, **kwargs)

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
            "embedder": keras.saving.serialize_keras_object(self.embedder),
            "distance": distances_lib.serialize(self.distance),
            "input_shape": self._input_shape_arg,
            "input_dtype": self._input_dtype_arg,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        if config.get("input_shape") is not None:
            config["input_shape"] = tuple(config["input_shape"])
        return cls(**config)
