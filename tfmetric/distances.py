"""Pairwise distances between two sets of embeddings.

Every loss, metric and index in tfmetric takes its distance through
`tfmetric.distances.get`, which accepts a name, a config dict or an instance.
A distance maps embeddings `x` of shape `(n, d)` and `y` of shape `(m, d)` to
an `(n, m)` float32 matrix. Some "distances" are similarities (larger means
closer); they say so with `is_similarity = True`, and losses flip their
direction accordingly.

All distances:

- compute in float32 whatever the input dtype (float16 and bfloat16 inputs are
  upcast), so mixed-precision models get stable losses;
- have finite gradients when two embeddings coincide (the square root of the
  euclidean distance and the p-th root of Minkowski are guarded);
- use no tensor larger than `n * m` (Minkowski and manhattan distances run a
  loop over feature blocks with a hand-written gradient instead of
  materialising the `(n, m, d)` difference tensor).
"""

import keras
from keras import ops

__all__ = [
    "Distance",
    "Euclidean",
    "SquaredEuclidean",
    "Cosine",
    "Manhattan",
    "InnerProduct",
    "Minkowski",
    "get",
    "serialize",
]

_NORM_EPSILON = 1e-12
# Largest number of elements a Minkowski feature block may hold; bounds the
# temporary of shape (n, m, block) to the size of a few (n, m) matrices.
_BLOCK_ELEMENTS = 1 << 22


def _prepare(x, name):
    x = ops.convert_to_tensor(x)
    if len(x.shape) != 2:
        raise ValueError(
            f"`{name}` must be a 2-D tensor of embeddings (batch, dim); "
            f"got shape {tuple(x.shape)}."
        )
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype == "bool" or dtype.startswith("complex") or dtype == "string":
        raise TypeError(f"`{name}` must hold numbers; got dtype {dtype}.")
    return ops.cast(x, "float32")


def _safe_sqrt(squared):
    """sqrt with a zero (not infinite) gradient at 0."""
    positive = ops.greater(squared, 0.0)
    return ops.where(positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0)


def _l2_normalize(x):
    sq_norm = ops.sum(ops.square(x), axis=1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(sq_norm, _NORM_EPSILON))


def _zero_diagonal(matrix):
    n = ops.shape(matrix)[0]
    return ops.where(ops.eye(n, dtype="bool"), 0.0, matrix)


@keras.saving.register_keras_serializable(package="tfmetric")
class Distance:
    """Base class of pairwise distances.

    Subclasses implement `pairwise(x, y)` on float32 `(n, d)` and `(m, d)`
    tensors. Calling a distance validates and upcasts its inputs; with `y`
    omitted it computes the distances within `x`, with an exact zero (and zero
    gradient) on the diagonal for true distances.

    Attributes:
        name: The registered short name of the distance.
        is_similarity: `True` when larger values mean closer embeddings.
    """

    name = None
    is_similarity = False

    def __call__(self, x, y=None):
        x = _prepare(x, "x")
        if y is None:
            matrix = self.pairwise(x, x)
            return matrix if self.is_similarity else _zero_diagonal(matrix)
        y = _prepare(y, "y")
        if x.shape[1] is not None and y.shape[1] is not None:
            if x.shape[1] != y.shape[1]:
                raise ValueError(
                    "`x` and `y` must have the same embedding size; got "
                    f"{x.shape[1]} and {y.shape[1]}."
                )
        return self.pairwise(x, y)

    def paired(self, x, y):
        """Distances between matching rows, `d(x[i], y[i])`, shape `(n,)`.

        Built-in distances compute them from `x - y` row by row (O(n * d), exact
        for nearly equal rows); others take the diagonal of `pairwise`. A
        subclass that overrides `pairwise` without `rowwise` gets the diagonal,
        so the two forms always agree.
        """
        x, y = _prepare(x, "x"), _prepare(y, "y")
        for axis, what in ((1, "embedding size"), (0, "number of rows")):
            if x.shape[axis] is not None and y.shape[axis] is not None:
                if x.shape[axis] != y.shape[axis]:
                    raise ValueError(
                        f"`x` and `y` must have the same {what}; got {x.shape[axis]} and "
                        f"{y.shape[axis]}."
                    )
        owner = next(cls for cls in type(self).__mro__ if "pairwise" in vars(cls))
        if "rowwise" in vars(owner):
            return self.rowwise(x, y)
        return ops.diagonal(self.pairwise(x, y))

    def pairwise(self, x, y):
        raise NotImplementedError

    def rowwise(self, x, y):
        """Row-wise form of `pairwise` on prepared float32 inputs."""
        return ops.diagonal(self.pairwise(x, y))

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="tfmetric")
class SquaredEuclidean(Distance):
    """Squared euclidean distance `||x - y||²`.

    Example:

    >>> import numpy as np
    >>> d = tfmetric.distances.SquaredEuclidean()
    >>> np.asarray(d([[0.0, 0.0]], [[3.0, 4.0]])).tolist()
    [[25.0]]
    """

    name = "squared_euclidean"

    def pairwise(self, x, y):
        x_sq = ops.sum(ops.square(x), axis=1, keepdims=True)
        y_sq = ops.sum(ops.square(y), axis=1, keepdims=True)
        squared = x_sq + ops.transpose(y_sq) - 2.0 * ops.matmul(x, ops.transpose(y))
        return ops.maximum(squared, 0.0)

    def rowwise(self, x, y):
        return ops.sum(ops.square(x - y), axis=1)


@keras.saving.register_keras_serializable(package="tfmetric")
class Euclidean(SquaredEuclidean):
    """Euclidean (L2) distance `||x - y||`.

    Computed from one matrix product; the square root has a zero gradient where
    two embeddings coincide, so duplicates in a batch never produce NaN.

    Example:

    >>> import numpy as np
    >>> d = tfmetric.distances.Euclidean()
    >>> np.asarray(d([[0.0, 0.0]], [[3.0, 4.0]])).tolist()
    [[5.0]]
    """

    name = "euclidean"

    def pairwise(self, x, y):
        return _safe_sqrt(super().pairwise(x, y))

    def rowwise(self, x, y):
        return _safe_sqrt(super().rowwise(x, y))


@keras.saving.register_keras_serializable(package="tfmetric")
class Cosine(Distance):
    """Cosine distance `1 - cos(x, y)`, in `[0, 2]`.

    A zero vector has distance 1 to everything (its direction is undefined).

    Example:

    >>> import numpy as np
    >>> d = tfmetric.distances.Cosine()
    >>> np.round(np.asarray(d([[1.0, 0.0]], [[0.0, 2.0], [3.0, 0.0]])), 6).tolist()
    [[1.0, 0.0]]
    """

    name = "cosine"

    def pairwise(self, x, y):
        cos = ops.matmul(_l2_normalize(x), ops.transpose(_l2_normalize(y)))
        return ops.clip(1.0 - cos, 0.0, 2.0)

    def rowwise(self, x, y):
        cos = ops.sum(_l2_normalize(x) * _l2_normalize(y), axis=1)
        return ops.clip(1.0 - cos, 0.0, 2.0)


@keras.saving.register_keras_serializable(package="tfmetric")
class InnerProduct(Distance):
    """Inner product `<x, y>`: a similarity, larger means closer.

    Example:

    >>> import numpy as np
    >>> d = tfmetric.distances.InnerProduct()
    >>> d.is_similarity
    True
    >>> np.asarray(d([[1.0, 2.0]], [[3.0, 4.0]])).tolist()
    [[11.0]]
    """

    name = "inner_product"
    is_similarity = True

    def pairwise(self, x, y):
        return ops.matmul(x, ops.transpose(y))

    def rowwise(self, x, y):
        return ops.sum(x * y, axis=1)


def _feature_blocks(x, block):
    """(n, d) -> (d / block, block, n), zero-padding the features."""
    d = x.shape[1]
    pad = (-d) % block
    if pad:
        x = ops.pad(x, [[0, 0], [0, pad]])
    return ops.reshape(ops.transpose(x), (-1, block, ops.shape(x)[0]))


def _minkowski(x, y, p):
    """Minkowski distance with O(n * m) memory in forward and backward."""
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    if n is None or m is None or d is None:
        block = 1
    else:
        block = int(max(1, min(d, _BLOCK_ELEMENTS // max(1, n * m))))

    def diff_power(xb, yb):
        # xb: (block, n), yb: (block, m) -> |x - y|^p summed over the block.
        diff = ops.abs(ops.expand_dims(xb, 2) - ops.expand_dims(yb, 1))
        return ops.sum(diff if p == 1 else ops.power(diff, p), axis=0)

    @ops.custom_gradient
    def minkowski(x, y):
        xs, ys = _feature_blocks(x, block), _feature_blocks(y, block)
        blocks = ops.shape(xs)[0]

        def body(i, total):
            return i + 1, total + diff_power(xs[i], ys[i])

        _, total = ops.while_loop(
            lambda i, total: i < blocks,
            body,
            (0, ops.zeros((ops.shape(x)[0], ops.shape(y)[0]), "float32")),
        )
        if p == 1:
            out = total
        else:
            positive = ops.greater(total, 0.0)
            out = ops.where(
                positive, ops.power(ops.where(positive, total, 1.0), 1.0 / p), 0.0
            )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # d out_ij / d x_ik = out_ij^(1-p) |x_ik - y_jk|^(p-1) sign(x_ik - y_jk)
            if p == 1:
                h = upstream
            else:
                positive = ops.greater(out, 0.0)
                h = ops.where(
                    positive,
                    upstream * ops.power(ops.where(positive, out, 1.0), 1.0 - p),
                    0.0,
                )

            def block_grad(blocks_xy):
                xb, yb = blocks_xy
                diff = ops.expand_dims(xb, 2) - ops.expand_dims(yb, 1)
                g = ops.sign(diff)
                if p != 1:
                    g = g * ops.power(ops.abs(diff), p - 1.0)
                g = g * ops.expand_dims(h, 0)
                return ops.sum(g, axis=2), -ops.sum(g, axis=1)

            gx, gy = ops.map(block_grad, (xs, ys))
            gx = ops.transpose(ops.reshape(gx, (-1, ops.shape(x)[0])))[:, :d]
            gy = ops.transpose(ops.reshape(gy, (-1, ops.shape(y)[0])))[:, :d]
            return gx, gy

        return out, grad

    return minkowski(x, y)


@keras.saving.register_keras_serializable(package="tfmetric")
class Minkowski(Distance):
    """Minkowski distance `(sum_k |x_k - y_k|^p)^(1/p)` for `p >= 1`.

    `p=1` is the manhattan distance and `p=2` the euclidean one (computed
    through the euclidean matrix product). Other values of `p` loop over
    feature blocks so that memory stays O(n * m) forward and backward.

    Args:
        p: The order, a number `>= 1`. Defaults to `2.0`.

    Example:

    >>> import numpy as np
    >>> d = tfmetric.distances.Minkowski(p=3)
    >>> np.round(np.asarray(d([[0.0, 0.0]], [[1.0, 2.0]])), 5).tolist()
    [[2.08008]]
    """

    name = "minkowski"

    def __init__(self, p=2.0):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1:
            raise ValueError(f"`p` must be a number >= 1; got {p!r}.")
        self.p = float(p)

    def pairwise(self, x, y):
        if self.p == 2.0:
            return Euclidean().pairwise(x, y)
        return _minkowski(x, y, self.p)

    def rowwise(self, x, y):
        if self.p == 2.0:
            return Euclidean().rowwise(x, y)
        total = ops.sum(ops.power(ops.abs(x - y), self.p), axis=1)
        if self.p == 1.0:
            return total
        positive = ops.greater(total, 0.0)
        return ops.where(positive, ops.power(ops.where(positive, total, 1.0), 1.0 / self.p), 0.0)

    def get_config(self):
        return {"p": self.p}


@keras.saving.register_keras_serializable(package="tfmetric")
class Manhattan(Distance):
    """Manhattan (L1) distance `sum_k |x_k - y_k|`.

    Example:

    >>> import numpy as np
    >>> d = tfmetric.distances.Manhattan()
    >>> np.asarray(d([[0.0, 0.0]], [[1.0, -2.0]])).tolist()
    [[3.0]]
    """

    name = "manhattan"

    def pairwise(self, x, y):
        return _minkowski(x, y, 1.0)

    def rowwise(self, x, y):
        return ops.sum(ops.abs(x - y), axis=1)


_BY_NAME = {
    cls.name: cls
    for cls in (Euclidean, SquaredEuclidean, Cosine, Manhattan, InnerProduct, Minkowski)
}
_BY_CLASS_NAME = {cls.__name__: cls for cls in _BY_NAME.values()}


def get(identifier):
    """Returns a `Distance` from a name, a config dict or an instance.

    Args:
        identifier: One of `"euclidean"`, `"squared_euclidean"`, `"cosine"`,
            `"manhattan"`, `"inner_product"`, `"minkowski"` (p=2); a dict such
            as `{"class_name": "Minkowski", "config": {"p": 3}}` (what
            `serialize` returns); a `Distance` instance, returned as is; or a
            learned-distance layer (`tfmetric.layers.Mahalanobis`,
            `tfmetric.layers.WeightedL1`), whose `Distance` view shares its
            weights.

    Returns:
        A `Distance` instance.

    Raises:
        ValueError: for an unknown name or a malformed dict.

    Example:

    >>> tfmetric.distances.get("cosine")
    Cosine()
    >>> tfmetric.distances.get({"class_name": "Minkowski", "config": {"p": 3}})
    Minkowski(p=3.0)
    """
    if isinstance(identifier, Distance):
        return identifier
    if callable(getattr(identifier, "as_distance", None)):
        # A learned distance (tfmetric.layers.Mahalanobis, WeightedL1): its Distance view.
        return identifier.as_distance()
    if isinstance(identifier, str):
        key = identifier.lower().replace("-", "_")
        if key not in _BY_NAME:
            raise ValueError(
                f"Unknown `distance` {identifier!r}; expected one of "
                f"{sorted(_BY_NAME)}, a config dict or a Distance instance."
            )
        return _BY_NAME[key]()
    if isinstance(identifier, dict):
        class_name = identifier.get("class_name")
        if class_name in _BY_CLASS_NAME:
            return _BY_CLASS_NAME[class_name].from_config(identifier.get("config") or {})
        try:
            obj = keras.saving.deserialize_keras_object(identifier)
        except Exception as error:
            raise ValueError(f"Cannot build a `distance` from {identifier!r}: {error}") from None
        if callable(getattr(obj, "as_distance", None)):
            obj = obj.as_distance()
        if not isinstance(obj, Distance):
            raise ValueError(f"`distance` config {identifier!r} does not describe a Distance.")
        return obj
    raise ValueError(
        "`distance` must be a name, a config dict or a tfmetric.distances.Distance; "
        f"got {identifier!r}."
    )


def serialize(distance):
    """Returns a JSON-friendly form of a distance, accepted by `get`.

    Built-in distances without arguments serialize to their name; others to a
    Keras config dict.
    """
    distance = get(distance)
    if type(distance) in _BY_NAME.values() and not distance.get_config():
        return distance.name
    if type(distance) in _BY_NAME.values():
        return {"class_name": type(distance).__name__, "config": distance.get_config()}
    return keras.saving.serialize_keras_object(distance)
