"""Learned distances: trainable layers that also serve as `tfmetric.distances`.

A learned distance is a Keras layer with two uses:

- as a **pair scorer** (the `scorer` of `tfmetric.models.SiameseModel`),
  called on two embedding batches of the same shape `(B, D)`:
  `layer(x1, x2)` returns one float32 value per pair, shape `(B,)`; batches of
  different sizes are a `ValueError`;
- as a **distance**, through `tfmetric.distances.get(layer)` (or
  `layer.as_distance()`): a `tfmetric.distances.Distance` whose matrix
  `distance(x, y)` of shape `(n, m)` uses the layer's current weights, so that
  retrieval and metrics use what the Siamese model learned. The distance
  view answers the direction questions (`to_closeness`, `kind`, ...;
  `tfmetric.distances.direction_of(layer)`).

The weights train only where the layer is part of a model (e.g. as the
scorer of a Siamese model); a loss given a learned distance does not own its
weights. A distance view serialises the layer's configuration, not its
weights (those live in the model that holds the layer), except where asked
to (`tfmetric.distances.serialize(distance, weights=True)`: what a saved
index or item store records, so that it loads with the trained weights).
"""

import keras
import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import inputs, numerics, validation
from tfmetric._src.autograph import as_written

__all__ = ["LearnedDistance", "Mahalanobis", "WeightedL1"]


def _check_pair(x1, x2):
    x1 = inputs.check_embeddings(x1, "x1", allow_empty=False)
    x2 = inputs.check_embeddings(x2, "x2", allow_empty=False)
    for axis, what in ((0, "batch size"), (1, "embedding size")):
        a, b = x1.shape[axis], x2.shape[axis]
        if a is not None and b is not None and a != b:
            raise ValueError(f"`x1` and `x2` must have the same {what}; got {a} and {b}.")
    return x1, x2


class LearnedDistanceLayer(keras.layers.Layer):
    """Base of the learned distances (float32 math, no autocast).

    Subclasses implement `paired(x1, x2)` (per pair, `(B,)`) and
    `pairwise(x, y)` (matrix, `(n, m)`) on float32 tensors, and set
    `is_similarity`.
    """

    is_similarity = False

    def __init__(self, **kwargs):
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.autocast = False

    def call(self, x1, x2):
        x1, x2 = _check_pair(x1, x2)
        self.check_size(x1, "x1")
        return self.paired(x1, x2)

    def built_size(self):
        """The embedding size the layer's weights were built for, or `None` before `build`."""
        return None

    def check_size(self, x, name):
        """Raises a `ValueError` naming `name` where `x`'s static size is not the built one."""
        expected, size = self.built_size(), x.shape[-1]
        if expected is not None and size is not None and size != expected:
            raise ValueError(
                f"`{name}` has embedding size {size}, but this {type(self).__name__} layer was "
                f"built for embeddings of size {expected}."
            )

    def compute_output_shape(self, x1_shape, x2_shape):
        return (x1_shape[0],)

    def as_distance(self):
        """Returns the `tfmetric.distances.Distance` view of this layer."""
        return LearnedDistance(self)

    def paired(self, x1, x2):
        raise NotImplementedError

    @as_written
    def pairwise(self, x, y):
        raise NotImplementedError


def _arguments(layer):
    """A layer's arguments that set its values (not its name, nor whether it trains)."""
    config = layer.get_config()
    config.pop("name", None)
    config.pop("trainable", None)
    return config


@keras.saving.register_keras_serializable(package="tfmetric")
class LearnedDistance(distances_lib.Distance):
    """`tfmetric.distances.Distance` view of a learned-distance layer.

    Built by `tfmetric.distances.get(layer)` or `layer.as_distance()`; shares
    the layer's weights (building the layer on first use).

    Args:
        layer: A `tfmetric.layers.Mahalanobis` or `tfmetric.layers.WeightedL1`
            (or a config dict of one).
    """

    name = "learned"

    def __init__(self, layer):
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, LearnedDistanceLayer):
            raise ValueError(f"`layer` must be a learned-distance layer; got {layer!r}.")
        self.layer = layer

    @property
    def is_similarity(self):
        return self.layer.is_similarity

    @as_written
    def pairwise(self, x, y):
        if not self.layer.built:
            self.layer.build(tuple(x.shape))
        self.layer.check_size(x, "x")
        self.layer.check_size(y, "y")
        return self.layer.pairwise(x, y)

    @as_written
    def rowwise(self, x, y):
        if not self.layer.built:
            self.layer.build(tuple(x.shape))
        self.layer.check_size(x, "x")
        self.layer.check_size(y, "y")
        return self.layer.paired(x, y)

    def euclidean_view(self, x):
        if not callable(getattr(self.layer, "transform", None)):
            return None
        if not self.layer.built:
            self.layer.build(tuple(x.shape))
        return self.layer.transform(ops.cast(x, "float32"))

    def get_config(self):
        return {"layer": keras.saving.serialize_keras_object(self.layer)}

    def get_weights(self):
        """The layer's weights (numpy arrays); none before it is built."""
        return self.layer.get_weights() if self.layer.built else []

    def set_weights(self, weights):
        """Sets the layer's weights (a built layer; Keras checks their number and shapes)."""
        if not len(weights):
            return
        if not self.layer.built:
            raise ValueError(
                f"{self!r} has no weights to set: its layer is not built (a config without "
                "`build_config`)."
            )
        self.layer.set_weights(weights)

    def same_values(self, other):
        """Whether `other` is this distance or a copy: same layer class, arguments, weights.

        An unbuilt layer (whose weights are its initial ones) is built for
        the other's embedding size to compare.
        """
        if self == other:
            return True
        if not isinstance(other, LearnedDistance) or type(self.layer) is not type(other.layer):
            return False
        if _arguments(self.layer) != _arguments(other.layer):
            return False
        for layer, built in ((self.layer, other.layer), (other.layer, self.layer)):
            size = built.built_size()
            if not layer.built and built.built and size is not None:
                layer.build((None, size))
        mine, theirs = self.get_weights(), other.get_weights()
        return len(mine) == len(theirs) and all(
            a.shape == b.shape and np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True)
        )

    def __eq__(self, other):
        return type(self) is type(other) and self.layer is other.layer

    def __hash__(self):
        return hash((type(self).__name__, id(self.layer)))

    def __repr__(self):
        return f"LearnedDistance({type(self.layer).__name__}(name={self.layer.name!r}))"


@keras.saving.register_keras_serializable(package="tfmetric")
class Mahalanobis(LearnedDistanceLayer):
    """Learned Mahalanobis distance `||L (x - y)||` with a trainable matrix `L`.

    `L` has shape `(D, units)` (a low-rank metric when `units < D`) and starts
    as the identity, i.e. the euclidean distance. The matrix of distances
    transforms both sets once and takes the euclidean distance of the
    transformed embeddings: O(n·m + (n + m)·D·units), no `(n, m, D)` tensor.
    The square root has a zero gradient where two embeddings coincide.

    As a pair scorer, `layer(x1, x2)` returns the distance of each pair
    `(x1[i], x2[i])`, shape `(B,)`. As a distance (`is_similarity = False`),
    `tfmetric.distances.get(layer)(x, y)` returns the `(n, m)` matrix.

    Args:
        units: Output size of `L`; `None` for `D` (square). Defaults to `None`.
        squared: Return `||L (x - y)||^2` instead. Defaults to `False`.
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    Example:

    >>> layer = tfmetric.layers.Mahalanobis()
    >>> x1 = np.array([[0.0, 0.0]], "float32")
    >>> x2 = np.array([[3.0, 4.0]], "float32")
    >>> np.asarray(layer(x1, x2)).tolist()
    [5.0]
    >>> distance = tfmetric.distances.get(layer)
    >>> np.asarray(distance(x1, np.concatenate([x1, x2]))).tolist()
    [[0.0, 5.0]]

    Reference:
        Xing et al., "Distance Metric Learning with Application to Clustering
        with Side-Information", NeurIPS 2002; Weinberger & Saul, "Distance
        Metric Learning for Large Margin Nearest Neighbor Classification",
        JMLR 2009.
    """

    def __init__(self, units=None, squared=False, **kwargs):
        super().__init__(**kwargs)
        self.units = None if units is None else validation.check_int(units, "units", 1)
        self.squared = validation.check_bool(squared, "squared")
        self.kernel = None

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError("`x1` must have a known last dimension to build Mahalanobis.")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(int(dim), self.units or int(dim)),
            initializer="identity",
            dtype="float32",
        )

    def built_size(self):
        return None if self.kernel is None else self.kernel.shape[0]

    def transform(self, x):
        """Maps embeddings `(n, D)` to `x L`, shape `(n, units)`, in float32."""
        x = inputs.check_embeddings(x, "x")
        self.check_size(x, "x")
        return numerics.matmul(x, ops.cast(self.kernel, "float32"))

    def paired(self, x1, x2):
        return numerics.row_norm(self.transform(x1 - x2), squared=self.squared)

    @as_written
    def pairwise(self, x, y):
        distance = distances_lib.SquaredEuclidean() if self.squared else distances_lib.Euclidean()
        return distance.pairwise(self.transform(x), self.transform(y))

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, squared=self.squared)
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class WeightedL1(LearnedDistanceLayer):
    """Learned weighted L1 similarity with a sigmoid (Koch et al.'s Siamese pair scorer).

    `p(x, y) = sigmoid(b - sum_k a_k |x_k - y_k|)`: the probability that `x`
    and `y` belong to the same class, with trainable feature weights
    `a_k >= 0` (kept non-negative by a constraint, and used as `|a_k|`) and
    bias `b`. Koch et al. write `sigmoid(sum_k a_k |x_k - y_k| + b)` with free
    weights; fixing the sign makes `sum_k a_k |x_k - y_k|` a weighted L1
    distance, so the scorer is a similarity (`is_similarity = True`). The
    weights start at `1 / D` and the bias at 0.

    As a pair scorer, `layer(x1, x2)` returns `p` for each pair, shape `(B,)`,
    to train with binary cross-entropy (`layer.logits(x1, x2)` gives the
    values before the sigmoid). As a distance, `tfmetric.distances.get(layer)`
    returns the `(n, m)` matrix of `p`, computed as a manhattan distance
    between `|a| * x` and `|a| * y` in O(n·m) memory.

    Args:
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    Example:

    >>> layer = tfmetric.layers.WeightedL1()
    >>> x1 = np.array([[0.0, 0.0], [1.0, 1.0]], "float32")
    >>> x2 = np.array([[0.0, 0.0], [3.0, 1.0]], "float32")
    >>> np.round(np.asarray(layer(x1, x2)), 4).tolist()  # sigmoid(0), sigmoid(-1)
    [0.5, 0.2689]
    >>> tfmetric.distances.get(layer).kind
    'similarity'

    Reference:
        Koch et al., "Siamese Neural Networks for One-shot Image Recognition",
        ICML Deep Learning Workshop 2015.
    """

    is_similarity = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.feature_weights = None
        self.bias = None

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError("`x1` must have a known last dimension to build WeightedL1.")
        self.feature_weights = self.add_weight(
            name="feature_weights",
            shape=(int(dim),),
            initializer=keras.initializers.Constant(1.0 / int(dim)),
            constraint=keras.constraints.NonNeg(),
            dtype="float32",
        )
        self.bias = self.add_weight(name="bias", shape=(), initializer="zeros", dtype="float32")

    def built_size(self):
        return None if self.feature_weights is None else self.feature_weights.shape[0]

    def _weights(self):
        return ops.abs(ops.cast(self.feature_weights, "float32"))

    def logits(self, x1, x2):
        """`b - sum_k |a_k| |x1_k - x2_k|` per pair, shape `(B,)`, before the sigmoid."""
        x1, x2 = _check_pair(x1, x2)
        if not self.built:
            self.build(tuple(x1.shape))
        self.check_size(x1, "x1")
        weighted = ops.sum(self._weights() * ops.abs(x1 - x2), axis=1)
        return ops.cast(self.bias, "float32") - weighted

    def paired(self, x1, x2):
        return ops.sigmoid(self.logits(x1, x2))

    @as_written
    def pairwise(self, x, y):
        weights = self._weights()
        distance = distances_lib.Manhattan().pairwise(x * weights, y * weights)
        return ops.sigmoid(ops.cast(self.bias, "float32") - distance)
