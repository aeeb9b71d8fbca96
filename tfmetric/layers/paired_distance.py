"""Layer computing the distance between matching rows of two embedding batches."""

import keras

from tfmetric import distances as distances_lib

__all__ = ["PairedDistance"]


@keras.saving.register_keras_serializable(package="tfmetric")
class PairedDistance(keras.layers.Layer):
    """Row-wise distance `d(e1[i], e2[i])` of two embedding batches, shape `(B,)`.

    The distance node of `tfmetric.models.SiameseModel`'s graph: it applies
    `distance.paired` (`tfmetric.losses.paired_distance`) to its two inputs and
    returns float32 values oriented as the distance defines them (a similarity
    such as `"inner_product"` stays a similarity). A learned distance layer
    passed as `distance` is tracked, so its weights train and save with the
    model.

    Args:
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        **kwargs: Keras layer arguments (`name`, ...).

    Example:

    >>> layer = tfmetric.layers.PairedDistance("manhattan")
    >>> e1 = np.array([[0.0, 0.0], [1.0, 1.0]], "float32")
    >>> e2 = np.array([[1.0, 2.0], [1.0, 1.0]], "float32")
    >>> np.asarray(layer(e1, e2)).tolist()
    [3.0, 0.0]
    """

    def __init__(self, distance="euclidean", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.distance = distances_lib.get(distance)
        learned = getattr(self.distance, "layer", None)
        # A learned distance's layer holds weights: track it so they train and save.
        self.learned_layer = learned if isinstance(learned, keras.layers.Layer) else None

    def build(self, e1_shape, e2_shape=None):
        if self.learned_layer is not None and not self.learned_layer.built:
            self.learned_layer.build(e1_shape)
        self.built = True

    def call(self, e1, e2):
        return self.distance.paired(e1, e2)

    def compute_output_shape(self, e1_shape, e2_shape=None):
        return (e1_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(distance=distances_lib.serialize(self.distance))
        return config
