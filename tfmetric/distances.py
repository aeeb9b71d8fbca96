"""Pairwise distances between two sets of embeddings.

Every loss, metric and index in tfmetric takes its distance through
`tfmetric.distances.get`, which accepts a name, a config dict or an instance.
A distance maps embeddings `x` of shape `(n, d)` and `y` of shape `(m, d)` to
an `(n, m)` float32 matrix. Some "distances" are similarities (larger means
closer); they say so with `is_similarity = True`. A distance answers the
direction questions itself (`to_closeness`, `to_dissimilarity`, `similarity`,
`farther_by`, `margin_bounds`), so no caller branches on `is_similarity`.

All distances:

- compute in float32 whatever the input dtype (float16 and bfloat16 inputs are
  upcast), so mixed-precision models get stable losses;
- have finite gradients when two embeddings coincide (the square root of the
  euclidean distance and the p-th root of Minkowski are guarded);
- are scale-safe: inputs are divided by a power of two near their largest
  magnitude before anything is squared (Minkowski: by each pair's largest
  coordinate difference), so values are correct for embeddings from 1e-30 to
  1e30, not only where `||x||²` fits in float32. Squared euclidean distances
  and inner products are themselves squares of such magnitudes: they overflow
  to Inf past about 1e19, as their true values do, and underflow to 0 below
  about 1e-19 (inner products, a plain matrix product, lose accuracy below
  about 1e-17, where products of single entries are flushed to zero);
- check their inputs: a wrong rank, a non-numeric dtype, no features, or
  (in eager calls) a NaN/Inf value raise a `ValueError`/`TypeError` naming
  `x` or `y`. Inside a traced or XLA-compiled function values are unknown:
  a NaN input gives NaN distances (never a plausible number such as 0), which
  `keras.callbacks.TerminateOnNaN` stops. See docs/validation.md.
- use no tensor larger than `n * m` (Minkowski, manhattan and weighted Jaccard
  distances run a loop over feature blocks with a hand-written gradient
  instead of materialising the `(n, m, d)` difference tensor).
"""

import base64
import binascii
import numbers

import keras
import numpy as np
from keras import ops

from tfmetric._src import inputs, numerics
from tfmetric._src.autograph import as_written

__all__ = [
    "DISSIMILARITY",
    "SIMILARITY",
    "Direction",
    "Distance",
    "Euclidean",
    "SquaredEuclidean",
    "Cosine",
    "Manhattan",
    "InnerProduct",
    "Minkowski",
    "Jaccard",
    "FittedMahalanobis",
    "direction_of",
    "get",
    "serialize",
]

# Largest number of elements a Minkowski feature block may hold; bounds the
# temporary of shape (n, m, block) to the size of a few (n, m) matrices.
_BLOCK_ELEMENTS = 1 << 22


def _prepare(x, name):
    raw = x
    if isinstance(x, (np.ndarray, list, tuple)) and np.asarray(x).dtype.kind in "USO":
        # Before the conversion: JAX and torch cannot hold strings in a tensor.
        raise TypeError(f"`{name}` must hold numbers; got dtype string.")
    x = ops.convert_to_tensor(x)
    if len(x.shape) != 2:
        raise ValueError(
            f"`{name}` must be a 2-D tensor of embeddings (batch, dim); "
            f"got shape {tuple(x.shape)}."
        )
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype == "bool" or dtype.startswith("complex") or dtype == "string":
        raise TypeError(f"`{name}` must hold numbers; got dtype {dtype}.")
    if x.shape[1] == 0:
        raise ValueError(
            f"`{name}` must have at least one feature; got shape {tuple(x.shape)}."
        )
    # Checked after the cast: a finite float64 beyond float32's range becomes Inf there.
    cast = ops.cast(x, "float32")
    values = inputs.static_value(cast)
    if values is not None and not np.all(np.isfinite(values)):
        # The values as given (JAX converts a float64 array to float32 on the way in).
        original = np.asarray(raw) if isinstance(raw, (np.ndarray, list, tuple)) else None
        if original is None or not np.issubdtype(original.dtype, np.number):
            original = inputs.static_value(x) if dtype != "float32" else values
        if original is not None and np.all(np.isfinite(original)):
            raise ValueError(
                f"`{name}` holds values beyond float32's range (|x| > 3.4e38), in which "
                "distances are computed; rescale the embeddings."
            )
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return cast


def _joint_scale(x, y):
    """A power of two near the largest magnitude in `x` and `y` (no gradient)."""
    return numerics.power_of_two_scale(
        ops.maximum(numerics.max_abs(x), numerics.max_abs(y))
    )


def _scaled_squared_euclidean(x, y):
    """`(||x/s - y/s||², s)` for the joint power-of-two scale `s`: no overflow or underflow."""
    scale = _joint_scale(x, y)
    x, y = x / scale, y / scale
    x_sq = ops.sum(ops.square(x), axis=1, keepdims=True)
    y_sq = ops.sum(ops.square(y), axis=1, keepdims=True)
    squared = x_sq + ops.transpose(y_sq) - 2.0 * numerics.matmul(x, ops.transpose(y))
    return ops.maximum(squared, 0.0), scale


def _zero_diagonal(matrix):
    n = ops.shape(matrix)[0]
    return ops.where(ops.eye(n, dtype="bool"), 0.0, matrix)


class Direction:
    """Which way a score points: the direction questions of a distance or a pair scorer.

    Every `Distance` is a `Direction`; `SIMILARITY` and `DISSIMILARITY` are the
    two directions of scores that are not distances (a pair scorer's output,
    values read from a file). Callers turn values into "larger is closer"
    scores (`to_closeness`) or "smaller is closer" values (`to_dissimilarity`)
    instead of branching on the direction themselves.

    Attributes:
        is_similarity: `True` when larger values mean closer embeddings.
    """

    is_similarity = False

    @property
    def kind(self):
        """`"similarity"` when larger values mean closer, else `"distance"`."""
        return "similarity" if self.is_similarity else "distance"

    @property
    def match_rule(self):
        """How a value is compared with a threshold to be a match, as text.

        `"score >= threshold"` for a similarity, `"score <= threshold"` for a
        distance.
        """
        return "score >= threshold" if self.is_similarity else "score <= threshold"

    @as_written
    def to_closeness(self, values):
        """Maps values of this distance to scores where larger means closer.

        Distances are negated, similarities kept. The map is its own inverse:
        `from_closeness(to_closeness(v)) == v`. Works on tensors, numpy arrays
        and Python numbers.
        """
        return values if self.is_similarity else -values

    @as_written
    def from_closeness(self, scores):
        """Maps scores of `to_closeness` back to values of this distance."""
        return self.to_closeness(scores)

    @as_written
    def to_dissimilarity(self, values):
        """Maps values of this distance to dissimilarities (smaller means closer).

        Distances are kept, similarities negated, so a loss or a search written
        for distances serves both: a margin `m` on `d(a, p) - d(a, n)` becomes a
        margin on `s(a, n) - s(a, p)`. Its own inverse.
        """
        return -values if self.is_similarity else values

    @as_written
    def farther_by(self, a, b):
        """How much farther values `a` are than values `b`: `a - b`, or `b - a` for a similarity."""
        return self.to_dissimilarity(a - b)

    @as_written
    def margin_bounds(self, margin):
        """`(near, far)` values of a margin loss: positives pulled to `near`, negatives pushed past `far`.

        `(0, margin)` for a distance; `(margin, 0)` for a similarity (a
        positive pair is close enough once its similarity reaches `margin`, a
        negative pair once it is at most 0).
        """
        return (margin, 0.0) if self.is_similarity else (0.0, margin)

    @as_written
    def within(self, values, threshold):
        """Whether `values` are at least as close as `threshold`.

        `values <= threshold` for a distance, `>=` for a similarity. Works on tensors, numpy arrays and Python numbers; exact (negation
        loses nothing), so it decides exactly as the written comparison would.
        """
        return self.to_closeness(values) >= self.to_closeness(threshold)


class _FixedDirection(Direction):
    def __init__(self, is_similarity):
        self.is_similarity = bool(is_similarity)

    def __repr__(self):
        return "tfmetric.distances." + ("SIMILARITY" if self.is_similarity else "DISSIMILARITY")


SIMILARITY = _FixedDirection(True)
"""The direction of scores where larger means closer (a `Direction`)."""
DISSIMILARITY = _FixedDirection(False)
"""The direction of values where smaller means closer (a `Direction`)."""


def direction_of(obj):
    """The `Direction` of a distance or of a pair scorer, or `None` when it does not say.

    Args:
        obj: A `Distance` (or anything `get` accepts), a learned-distance layer
            (its distance view), or any object with a boolean `is_similarity`
            attribute (e.g. a custom pair scorer layer).

    Returns:
        A `Direction`, or `None` for an object that does not tell its direction.

    Raises:
        ValueError: for a name or config dict that `get` rejects.

    Example:

    >>> tfmetric.distances.direction_of("inner_product").kind
    'similarity'
    >>> tfmetric.distances.direction_of(object()) is None
    True
    """
    if isinstance(obj, Direction):
        return obj
    if isinstance(obj, (str, dict)) or callable(getattr(obj, "as_distance", None)):
        return get(obj)
    flag = getattr(obj, "is_similarity", None)
    if isinstance(flag, (bool, np.bool_)):
        return SIMILARITY if flag else DISSIMILARITY
    return None


@keras.saving.register_keras_serializable(package="tfmetric")
class Distance(Direction):
    """Base class of pairwise distances.

    Subclasses implement `pairwise(x, y)` on float32 `(n, d)` and `(m, d)`
    tensors. Calling a distance validates and upcasts its inputs; with `y`
    omitted it computes the distances within `x`, with an exact zero (and zero
    gradient) on the diagonal for true distances.

    Direction questions (`to_closeness`, `to_dissimilarity`, `farther_by`,
    `margin_bounds`, `within`, `kind`) come from `Direction`.

    Attributes:
        name: The registered short name of the distance.
        is_similarity: `True` when larger values mean closer embeddings.
    """

    name = None

    @as_written
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

    @as_written
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

    @as_written
    def pairwise(self, x, y):
        raise NotImplementedError

    @as_written
    def rowwise(self, x, y):
        """Row-wise form of `pairwise` on prepared float32 inputs."""
        return ops.diagonal(self.pairwise(x, y))

    @as_written
    def closeness(self, x, y=None):
        """The matrix of `to_closeness` scores: larger means closer."""
        return self.to_closeness(self(x, y))

    @as_written
    def dissimilarity(self, x, y=None):
        """The matrix of `to_dissimilarity` values: smaller means closer."""
        return self.to_dissimilarity(self(x, y))

    @as_written
    def similarity(self, x, y=None):
        """A similarity view: the values of a similarity, `1 - d` for a distance `d`.

        `1 - d` is exactly the cosine similarity for `Cosine` and keeps
        thresholds such as multi-similarity's `base` or circle loss' margins
        meaningful for other distances on normalised embeddings; softmax-based
        losses are unaffected by the constant shift.
        """
        matrix = self(x, y)
        return matrix if self.is_similarity else 1.0 - matrix

    @as_written
    def euclidean_view(self, x):
        """Embeddings whose euclidean distances order pairs as this distance does, or `None`.

        Used where only euclidean geometry is available (k-means): the raw
        embeddings for euclidean distances, the L2-normalised ones for the
        cosine distance, the whitened ones for a Mahalanobis distance. `None`
        when no such view exists (manhattan, inner product, ...).
        """
        return None

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def get_weights(self):
        """The distance's trained weights, a list of numpy arrays: none for a fixed distance.

        A learned distance (`tfmetric.layers.Mahalanobis`, ...) returns its
        layer's weights; `serialize(distance, weights=True)` records them.
        """
        return []

    def set_weights(self, weights):
        """Sets the weights that `get_weights` returns; a fixed distance takes none.

        Raises:
            ValueError: for weights that do not fit the distance.
        """
        if len(weights):
            raise ValueError(f"{self!r} has no weights; got {len(weights)} arrays.")

    def same_values(self, other):
        """Whether `other` computes the same values as this distance.

        For a fixed distance, equality; a learned distance compares its
        layer's class, arguments and weights (two copies of one trained layer
        are the same distance, though not equal objects).
        """
        return self == other

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

    @as_written
    def pairwise(self, x, y):
        squared, scale = _scaled_squared_euclidean(x, y)
        return squared * scale * scale

    @as_written
    def rowwise(self, x, y):
        return numerics.row_norm(x - y, squared=True)

    @as_written
    def euclidean_view(self, x):
        return x


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

    @as_written
    def pairwise(self, x, y):
        squared, scale = _scaled_squared_euclidean(x, y)
        return numerics.safe_sqrt(squared) * scale

    @as_written
    def rowwise(self, x, y):
        return numerics.row_norm(x - y)


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

    @as_written
    def pairwise(self, x, y):
        cos = numerics.matmul(numerics.l2_normalize(x), ops.transpose(numerics.l2_normalize(y)))
        return numerics.clip_keeping_nan(1.0 - cos, 0.0, 2.0)

    @as_written
    def rowwise(self, x, y):
        cos = ops.sum(numerics.l2_normalize(x) * numerics.l2_normalize(y), axis=1)
        return numerics.clip_keeping_nan(1.0 - cos, 0.0, 2.0)

    @as_written
    def euclidean_view(self, x):
        return numerics.l2_normalize(ops.cast(x, "float32"))


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

    @as_written
    def pairwise(self, x, y):
        return numerics.matmul(x, ops.transpose(y))

    @as_written
    def rowwise(self, x, y):
        return ops.sum(x * y, axis=1)


def _feature_blocks(x, block):
    """(n, d) -> (d / block, block, n), zero-padding the features."""
    d = x.shape[1]
    pad = (-d) % block
    if pad:
        x = ops.pad(x, [[0, 0], [0, pad]])
    # No -1 size: it cannot be inferred for an empty batch (n = 0).
    shape = ops.shape(x)
    return ops.reshape(ops.transpose(x), (shape[1] // block, block, shape[0]))


def _nan_pairs(x, y):
    """`(n, m)` mask of the pairs where `x[i]` or `y[j]` holds a NaN."""
    nan_x = ops.any(ops.isnan(x), axis=1)
    nan_y = ops.any(ops.isnan(y), axis=1)
    return ops.logical_or(ops.expand_dims(nan_x, 1), ops.expand_dims(nan_y, 0))


def _minkowski(x, y, p):
    """Minkowski distance with O(n * m) memory in forward and backward.

    For `p > 1` the sum of powers is kept relative to each pair's largest
    coordinate difference so far (rescaled, as a streaming log-sum-exp is, when
    a block holds a larger one): every power is of a ratio in `[0, 1]`, so no
    `p` overflows or underflows the result; `p = inf` is the exact Chebyshev
    distance (the largest difference).
    """
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    if n is None or m is None or d is None:
        block = 1
    else:
        block = int(max(1, min(d, _BLOCK_ELEMENTS // max(1, n * m))))
    chebyshev = p == float("inf")

    def abs_diff(xb, yb):
        # xb: (block, n), yb: (block, m) -> (block, n, m)
        return ops.abs(ops.expand_dims(xb, 2) - ops.expand_dims(yb, 1))

    def safe(values):
        # NaN counts as positive, so that it propagates (never becomes 0).
        positive = ops.logical_not(ops.less_equal(values, 0.0))
        return positive, ops.where(positive, values, 1.0)

    @ops.custom_gradient
    def minkowski(x, y):
        xs, ys = _feature_blocks(x, block), _feature_blocks(y, block)
        blocks = ops.shape(xs)[0]
        zeros = ops.zeros((ops.shape(x)[0], ops.shape(y)[0]), "float32")

        if p == 1:

            def body(i, peak, total):
                return i + 1, peak, total + ops.sum(abs_diff(xs[i], ys[i]), axis=0)

        else:

            def body(i, peak, total):
                diff = abs_diff(xs[i], ys[i])
                block_peak = _nonnegative_max(diff, axis=0)
                new_peak = ops.maximum(peak, block_peak)
                if chebyshev:
                    # `total` counts the coordinates that attain the largest difference so far:
                    # the gradient shares the upstream value among them, as `ops.max`'s does.
                    ties = ops.sum(
                        ops.cast(ops.equal(diff, ops.expand_dims(block_peak, 0)), "float32"),
                        axis=0,
                    )
                    total = ops.where(
                        ops.greater(block_peak, peak),
                        ties,
                        ops.where(ops.equal(block_peak, peak), total + ties, total),
                    )
                    return i + 1, new_peak, total
                _, divisor = safe(new_peak)
                total = total * ops.power(peak / divisor, p) + ops.sum(
                    ops.power(diff / ops.expand_dims(divisor, 0), p), axis=0
                )
                return i + 1, new_peak, total

        _, peak, total = ops.while_loop(
            lambda i, peak, total: i < blocks, body, (0, zeros, zeros)
        )
        if p == 1:
            out = total
        elif chebyshev:
            # An XLA max ignores NaN: NaN inputs are put back explicitly.
            out = ops.where(_nan_pairs(x, y), float("nan"), peak)
            ties = ops.maximum(total, 1.0)
        else:
            positive, _ = safe(total)
            # total lies in [1, d] where peak > 0 (the largest ratio is 1).
            out = ops.where(positive, peak * ops.power(ops.where(positive, total, 1.0), 1.0 / p), 0.0)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # d out_ij / d x_ik = sign(x_ik - y_jk) (|x_ik - y_jk| / out_ij)^(p-1), a ratio in
            # [0, 1]; for p = inf, sign(x_ik - y_jk) / (number of ties) where |x_ik - y_jk| is the
            # largest difference (a subgradient: the mean of the tied coordinates' gradients).
            positive, divisor = safe(out)
            h = ops.where(positive, upstream, 0.0)

            def block_grad(blocks_xy):
                xb, yb = blocks_xy
                diff = ops.expand_dims(xb, 2) - ops.expand_dims(yb, 1)
                g = ops.sign(diff) * ops.expand_dims(h, 0)
                if chebyshev:
                    g = ops.where(
                        ops.equal(ops.abs(diff), ops.expand_dims(out, 0)),
                        g / ops.expand_dims(ties, 0),
                        0.0,
                    )
                elif p != 1:
                    g = g * ops.power(ops.abs(diff) / ops.expand_dims(divisor, 0), p - 1.0)
                return ops.sum(g, axis=2), -ops.sum(g, axis=1)

            gx, gy = ops.map(block_grad, (xs, ys))
            features = blocks * block
            gx = ops.transpose(ops.reshape(gx, (features, ops.shape(x)[0])))[:, :d]
            gy = ops.transpose(ops.reshape(gy, (features, ops.shape(y)[0])))[:, :d]
            return gx, gy

        return out, grad

    return minkowski(x, y)


def _nonnegative_max(x, axis):
    """`max(x, axis)` of non-negative values: 0 over an empty axis, empty for an empty batch.

    `initial=0.0` gives both under TensorFlow and JAX; Keras' PyTorch `max`
    returns a scalar for any tensor with a zero dimension, so a statically
    empty `x` gets its zeros here.
    """
    shape = tuple(ops.shape(x))
    if any(isinstance(size, int) and size == 0 for size in shape):
        axis = axis % len(shape)
        return ops.zeros(tuple(size for i, size in enumerate(shape) if i != axis), x.dtype)
    return ops.max(x, axis=axis, initial=0.0)


@keras.saving.register_keras_serializable(package="tfmetric")
class Minkowski(Distance):
    """Minkowski distance `(sum_k |x_k - y_k|^p)^(1/p)` for `p >= 1`.

    `p=1` is the manhattan distance, `p=2` the euclidean one (computed
    through the euclidean matrix product) and `p=float("inf")` the Chebyshev
    distance `max_k |x_k - y_k|` (exactly). Other values of `p` loop over
    feature blocks so that memory stays O(n * m) forward and backward; the
    powers are taken of ratios to each pair's largest difference, so large
    `p` (100, 1000) neither overflows nor underflows.

    Args:
        p: The order, a number `>= 1` or `float("inf")`. Defaults to `2.0`.

    Example:

    >>> import numpy as np
    >>> d = tfmetric.distances.Minkowski(p=3)
    >>> np.round(np.asarray(d([[0.0, 0.0]], [[1.0, 2.0]])), 5).tolist()
    [[2.08008]]
    >>> np.asarray(tfmetric.distances.Minkowski(p=float("inf"))([[0.0, 0.0]], [[4.0, 1.0]])).tolist()
    [[4.0]]
    """

    name = "minkowski"

    def __init__(self, p=2.0):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not p >= 1:
            raise ValueError(f"`p` must be a number >= 1 or float('inf'); got {p!r}.")
        self.p = float(p)

    @as_written
    def pairwise(self, x, y):
        if self.p == 2.0:
            return Euclidean().pairwise(x, y)
        return _minkowski(x, y, self.p)

    @as_written
    def rowwise(self, x, y):
        if self.p == 2.0:
            return Euclidean().rowwise(x, y)
        diff = ops.abs(x - y)
        if self.p == 1.0:
            return ops.sum(diff, axis=1)
        peak = _nonnegative_max(diff, axis=1)
        if self.p == float("inf"):
            return numerics.reduced_keeping_nan(peak, diff, axis=1)
        # A sum of powers of ratios in [0, 1]; the constant peak leaves the gradient exact.
        divisor = ops.stop_gradient(ops.where(ops.greater(peak, 0.0), peak, 1.0))
        total = ops.sum(ops.power(diff / divisor[:, None], self.p), axis=1)
        zero = ops.less_equal(total, 0.0)  # NaN is not: it propagates
        return ops.where(zero, 0.0, divisor * ops.power(ops.where(zero, 1.0, total), 1.0 / self.p))

    @as_written
    def euclidean_view(self, x):
        return x if self.p == 2.0 else None

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

    @as_written
    def pairwise(self, x, y):
        return _minkowski(x, y, 1.0)

    @as_written
    def rowwise(self, x, y):
        return ops.sum(ops.abs(x - y), axis=1)


@keras.saving.register_keras_serializable(package="tfmetric")
class Jaccard(Distance):
    """Jaccard distance: one minus the overlap of two sets, in `[0, 1]`.

    With `weighted=False` the inputs are sets as binary (multi-hot) vectors
    and the distance is `1 - |x ∩ y| / |x ∪ y|`, computed in its
    differentiable (Tanimoto) form `1 - <x, y> / (|x|² + |y|² - <x, y>)`: one
    matrix product, equal to `scipy.spatial.distance.jaccard` on 0/1 vectors.

    With `weighted=True` the inputs are non-negative vectors (negative
    entries count as 0) and the distance is the weighted (Ruzicka) form
    `1 - Σ_k min(x_k, y_k) / Σ_k max(x_k, y_k)`. Since `min(a, b) + max(a, b)
    = a + b` and `max(a, b) - min(a, b) = |a - b|`, it equals
    `2 L1 / (Σx + Σy + L1)` with `L1` the manhattan distance, which runs over
    feature blocks: memory stays O(n * m) forward and backward.

    Two empty sets (zero vectors) have distance 0, as in scipy; gradients are
    finite everywhere.

    Args:
        weighted: Use the weighted form for non-negative vectors. Defaults to
            `False`.

    Example:

    >>> import numpy as np
    >>> d = tfmetric.distances.Jaccard()
    >>> np.round(np.asarray(d([[1.0, 1.0, 0.0]], [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])), 4).tolist()
    [[0.6667, 0.0]]
    >>> w = tfmetric.distances.Jaccard(weighted=True)
    >>> np.round(np.asarray(w([[2.0, 1.0]], [[1.0, 3.0]])), 4).tolist()
    [[0.6]]

    Reference:
        Jaccard. "The distribution of the flora in the alpine zone". New
        Phytologist, 1912; Ružička. "Anwendung mathematisch-statistischer
        Methoden in der Geobotanik". 1958 (the weighted form).
    """

    name = "jaccard"

    def __init__(self, weighted=False):
        if not isinstance(weighted, bool):
            raise TypeError(f"`weighted` must be a bool; got {weighted!r}.")
        self.weighted = weighted

    @staticmethod
    def _ratio(numerator, denominator):
        zero = ops.less_equal(denominator, 0.0)  # NaN is not: it propagates
        ratio = numerator / ops.where(zero, 1.0, denominator)
        return numerics.clip_keeping_nan(ops.where(zero, 0.0, ratio), 0.0, 1.0)

    @as_written
    def pairwise(self, x, y):
        scale = _joint_scale(x, y)  # the ratios are scale-free; this keeps the squares finite
        x, y = x / scale, y / scale
        if self.weighted:
            x, y = ops.relu(x), ops.relu(y)
            l1 = _minkowski(x, y, 1.0)
            total = ops.sum(x, axis=1, keepdims=True) + ops.transpose(
                ops.sum(y, axis=1, keepdims=True)
            )
            return self._ratio(2.0 * l1, total + l1)
        dot = numerics.matmul(x, ops.transpose(y))
        x_sq = ops.sum(ops.square(x), axis=1, keepdims=True)
        y_sq = ops.transpose(ops.sum(ops.square(y), axis=1, keepdims=True))
        # |x|² + |y|² - <x, y> = (|x - y|² + |x|² + |y|²) / 2 >= 0, zero only for x = y = 0.
        union = ops.maximum(x_sq + y_sq - dot, 0.0)
        return self._ratio(union - dot, union)

    @as_written
    def rowwise(self, x, y):
        scale = numerics.power_of_two_scale(
            ops.maximum(numerics.max_abs(x, axis=1), numerics.max_abs(y, axis=1))
        )[:, None]
        x, y = x / scale, y / scale
        if self.weighted:
            x, y = ops.relu(x), ops.relu(y)
            l1 = ops.sum(ops.abs(x - y), axis=1)
            return self._ratio(2.0 * l1, ops.sum(x, axis=1) + ops.sum(y, axis=1) + l1)
        dot = ops.sum(x * y, axis=1)
        union = ops.maximum(ops.sum(ops.square(x), axis=1) + ops.sum(ops.square(y), axis=1) - dot, 0.0)
        return self._ratio(union - dot, union)

    def get_config(self):
        return {"weighted": self.weighted}


@keras.saving.register_keras_serializable(package="tfmetric")
class FittedMahalanobis(Distance):
    """Mahalanobis distance `sqrt((x - y)ᵀ S⁻¹ (x - y))` for a fixed covariance `S`.

    The distance that "accounts for the distribution of the data": build it
    from a sample of embeddings with `FittedMahalanobis.fit(sample)`, which takes
    the sample covariance (regularised so that it is invertible), or pass the
    inverse covariance directly. Both sets are whitened once by the Cholesky
    factor `W` of `S⁻¹ = W Wᵀ` and the euclidean distance of `x W` and `y W`
    is returned: one matrix product, O(n * m) memory, a zero gradient where
    two embeddings coincide. For a trainable metric, see
    `tfmetric.layers.Mahalanobis`.

    Args:
        inverse_covariance: The symmetric positive definite matrix `S⁻¹`,
            shape `(d, d)` (nested lists or an array).

    Raises:
        ValueError: if `inverse_covariance` is not a square, symmetric,
            positive definite matrix of finite numbers.

    Example:

    >>> import numpy as np
    >>> sample = np.random.default_rng(0).normal(size=(500, 2)) * [1.0, 10.0]
    >>> d = tfmetric.distances.FittedMahalanobis.fit(sample)
    >>> np.round(np.asarray(d([[0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])), 1).tolist()
    [[1.0, 0.1]]

    Reference:
        Mahalanobis. "On the generalised distance in statistics". Proceedings
        of the National Institute of Sciences of India, 1936.
    """

    name = "mahalanobis"

    def __init__(self, inverse_covariance):
        matrix = np.asarray(inverse_covariance, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
            raise ValueError(
                "`inverse_covariance` must be a square (d, d) matrix; got shape "
                f"{matrix.shape}."
            )
        if not np.all(np.isfinite(matrix)):
            raise ValueError("`inverse_covariance` contains NaN or infinite values.")
        if not np.allclose(matrix, matrix.T, rtol=1e-5, atol=1e-8 * np.abs(matrix).max()):
            raise ValueError("`inverse_covariance` must be symmetric.")
        try:
            factor = np.linalg.cholesky((matrix + matrix.T) / 2.0)
        except np.linalg.LinAlgError:
            raise ValueError(
                "`inverse_covariance` must be positive definite; use "
                "`FittedMahalanobis.fit(sample, regularization=...)` to regularise a singular "
                "covariance."
            ) from None
        self.inverse_covariance = matrix
        self._whitening = factor.astype(np.float32)

    @classmethod
    def fit(cls, sample, regularization=1e-6):
        """A Mahalanobis distance for the covariance of `sample`.

        The covariance `S` (unbiased, as `numpy.cov`) is regularised as
        `S + regularization * mean(diag(S)) * I` (a ridge relative to the
        data's scale) before it is inverted, so that a sample with fewer rows
        than features, or with constant or collinear features, still gives a
        usable distance.

        Args:
            sample: Embeddings, shape `(n, d)` with `n >= 2`.
            regularization: Relative ridge added to the covariance, `>= 0`.
                With `0`, a singular covariance is an error. Defaults to
                `1e-6`.

        Returns:
            A `FittedMahalanobis` distance.

        Raises:
            ValueError: for fewer than two rows, NaN/Inf values, a negative
                `regularization`, or a singular covariance that is not
                regularised.
        """
        sample = np.asarray(sample)
        if sample.dtype == bool or not np.issubdtype(sample.dtype, np.number):
            raise TypeError(f"`sample` must hold real numbers; got dtype {sample.dtype}.")
        sample = sample.astype(np.float64)
        if sample.ndim != 2 or sample.shape[0] < 2 or sample.shape[1] < 1:
            raise ValueError(
                f"`sample` must have shape (n, d) with n >= 2 rows; got {sample.shape}."
            )
        if not np.all(np.isfinite(sample)):
            raise ValueError("`sample` contains NaN or infinite values.")
        if isinstance(regularization, bool) or not isinstance(regularization, (int, float)):
            raise ValueError(f"`regularization` must be a number >= 0; got {regularization!r}.")
        if not regularization >= 0:
            raise ValueError(f"`regularization` must be a number >= 0; got {regularization!r}.")
        covariance = np.atleast_2d(np.cov(sample, rowvar=False))
        d = covariance.shape[0]
        scale = float(np.mean(np.diag(covariance)))
        if scale <= 0.0:
            raise ValueError("`sample` has zero variance in every feature: no covariance to fit.")
        covariance = covariance + regularization * scale * np.eye(d)
        if np.linalg.matrix_rank(covariance, tol=1e-10 * scale * d) < d:
            raise ValueError(
                f"The covariance of `sample` is singular ({sample.shape[0]} rows, {d} features, "
                "or constant / collinear features); pass `regularization` > 0 (e.g. 1e-3) to "
                "add a ridge."
            )
        inverse = np.linalg.inv(covariance)
        return cls((inverse + inverse.T) / 2.0)

    @as_written
    def euclidean_view(self, x):
        return self._whiten(ops.cast(x, "float32"))

    def _whiten(self, x):
        d = self._whitening.shape[0]
        if x.shape[1] is not None and x.shape[1] != d:
            raise ValueError(
                f"This FittedMahalanobis distance is for embeddings of size {d}; got size {x.shape[1]}."
            )
        return numerics.matmul(x, ops.convert_to_tensor(self._whitening))

    @as_written
    def pairwise(self, x, y):
        return Euclidean().pairwise(self._whiten(x), self._whiten(y))

    @as_written
    def rowwise(self, x, y):
        return numerics.row_norm(self._whiten(x - y))

    def get_config(self):
        return {"inverse_covariance": self.inverse_covariance.tolist()}

    def __hash__(self):
        return hash((type(self).__name__, self.inverse_covariance.tobytes()))


_BY_NAME = {
    cls.name: cls
    for cls in (Euclidean, SquaredEuclidean, Cosine, Manhattan, InnerProduct, Minkowski, Jaccard)
}
_BY_CLASS_NAME = {cls.__name__: cls for cls in _BY_NAME.values()}
_BY_CLASS_NAME["FittedMahalanobis"] = FittedMahalanobis


@as_written
def get(identifier):
    """Returns a `Distance` from a name, a config dict or an instance.

    Args:
        identifier: One of `"euclidean"`, `"squared_euclidean"`, `"cosine"`,
            `"manhattan"`, `"inner_product"`, `"minkowski"` (p=2), `"jaccard"`
            (set form); a dict such
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
        if key == FittedMahalanobis.name:
            raise ValueError(
                "`distance` 'mahalanobis' needs a covariance: pass "
                "`tfmetric.distances.FittedMahalanobis.fit(sample)` (or its config dict); for a "
                "trainable metric use `tfmetric.layers.Mahalanobis`."
            )
        if key not in _BY_NAME:
            raise ValueError(
                f"Unknown `distance` {identifier!r}; expected one of "
                f"{sorted(_BY_NAME)}, a config dict or a Distance instance."
            )
        return _BY_NAME[key]()
    if isinstance(identifier, dict) and "weights" in identifier:
        identifier = dict(identifier)
        weights = _decode_weights(identifier.pop("weights"))
        distance = get(identifier)
        try:
            distance.set_weights(weights)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"Cannot restore the weights of `distance` {distance!r}: {error}"
            ) from None
        return distance
    if isinstance(identifier, dict):
        class_name = identifier.get("class_name")
        if class_name in _BY_CLASS_NAME:
            config = identifier.get("config") or {}
            if not isinstance(config, dict):
                raise ValueError(
                    f"Cannot build a `distance` from {identifier!r}: its 'config' must be a dict "
                    f"of arguments; got {config!r}."
                )
            try:
                return _BY_CLASS_NAME[class_name].from_config(config)
            except TypeError as error:  # unknown or missing arguments
                raise ValueError(
                    f"Cannot build a `distance` from {identifier!r}: {error}"
                ) from None
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


def serialize(distance, weights=False):
    """Returns a JSON-friendly form of a distance, accepted by `get`.

    Built-in distances without arguments serialize to their name; others to a
    Keras config dict.

    Args:
        distance: Anything `get` accepts.
        weights: Also record the weights of a learned distance (under the
            key `"weights"`, base64 arrays), which `get` then restores, so
            that a saved index or store gives the distances it gave. Defaults
            to `False` (the configuration only, as Keras configs hold it).
    """
    distance = get(distance)
    if type(distance) in _BY_NAME.values() and not distance.get_config():
        return distance.name
    if type(distance) in _BY_CLASS_NAME.values():
        config = {"class_name": type(distance).__name__, "config": distance.get_config()}
    else:
        config = keras.saving.serialize_keras_object(distance)
    arrays = distance.get_weights() if weights else []
    if len(arrays):
        config["weights"] = [_encode_array(np.asarray(array)) for array in arrays]
    return config


def _encode_array(array):
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "data": base64.b64encode(little.tobytes()).decode("ascii"),
    }


def _decode_weights(weights):
    """The arrays that `serialize(..., weights=True)` recorded, or a `ValueError`."""
    try:
        if not isinstance(weights, list):
            raise TypeError(f"a list of arrays expected, not {type(weights).__name__}")
        arrays = []
        for record in weights:
            dtype = np.dtype(record["dtype"])
            if dtype.kind not in "biuf":
                raise TypeError(f"dtype {dtype} is not numeric")
            data = base64.b64decode(record["data"], validate=True)
            array = np.frombuffer(data, dtype.newbyteorder("<"))
            arrays.append(array.reshape(tuple(record["shape"])).astype(dtype))
    except (KeyError, TypeError, ValueError, binascii.Error) as error:
        raise ValueError(
            f"The recorded weights of `distance` are damaged: {type(error).__name__}: {error}"
        ) from None
    return arrays
