"""NaN-free, scale-safe numeric building blocks (backend-agnostic, `keras.ops`).

Scale safety: a float32 square overflows past 1.8e19 and underflows below
1e-19, so norms and distances are computed on inputs divided by a power of
two near their largest magnitude (`power_of_two_scale`) and scaled back.
Dividing by a power of two is exact, so for ordinary magnitudes the results
are bitwise those of the plain formulas; from 1e-30 to 1e30 they stay
correct where the plain formulas return 0, Inf or NaN.
"""

import keras
from keras import ops

NORM_EPSILON = 1e-12

# float32 exponents of normal numbers: 2**-126 .. 2**127.
_MIN_EXPONENT, _MAX_EXPONENT = -126.0, 127.0


def matmul(a, b):
    """`a @ b` with float32 products in full float32 precision, on every backend.

    On NVIDIA GPUs since Ampere, JAX's default precision runs float32 matrix
    products in TF32 (10-bit mantissa): a squared euclidean distance
    `|x|² + |y|² - 2<x, y>` then loses its small values to cancellation (two
    unit vectors 0.05 apart: `d²` = 0.0025 against an error ~1e-3), which
    changes mining decisions, rankings and retrieval metrics. Under JAX the
    product asks for `Precision.HIGHEST`, in its gradient too; PyTorch keeps
    float32 products in float32 by default; under TensorFlow TF32 follows
    `tf.config.experimental.enable_tensor_float_32_execution` (no per-op
    setting exists there). On CPUs nothing changes.
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.numpy.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
    return ops.matmul(a, b)


def safe_sqrt(squared):
    """Square root with a zero (not infinite) gradient at 0; NaN stays NaN."""
    nonpositive = ops.less_equal(squared, 0.0)
    return ops.where(nonpositive, 0.0, ops.sqrt(ops.where(nonpositive, 1.0, squared)))


def power_of_two_scale(magnitude):
    """A power of two within a factor 2 of `magnitude` (1 where it is 0 or not finite).

    Dividing by it and multiplying back are exact in floating point. It
    carries no gradient: every caller uses it on a function that is
    homogeneous in its inputs, whose gradient the scaling does not change.
    """
    usable = ops.logical_and(ops.greater(magnitude, 0.0), ops.isfinite(magnitude))
    exponent = ops.floor(ops.log2(ops.where(usable, magnitude, 1.0)))
    scale = ops.exp2(ops.clip(exponent, _MIN_EXPONENT, _MAX_EXPONENT))
    return ops.stop_gradient(scale)


def max_abs(x, axis=None, keepdims=False):
    """The largest absolute value of `x` (0 for an empty tensor)."""
    return ops.max(ops.abs(x), axis=axis, keepdims=keepdims, initial=0.0)


def row_norm(x, squared=False):
    """The L2 norm (or its square) of each row of a `(n, d)` tensor, shape `(n,)`, scale-safe."""
    scale = power_of_two_scale(max_abs(x, axis=1))
    sq = ops.sum(ops.square(x / ops.expand_dims(scale, 1)), axis=1)
    if squared:
        return sq * scale * scale
    return safe_sqrt(sq) * scale


def l2_normalize(x, axis=-1):
    """L2 normalisation along `axis` with a finite value and gradient at zero.

    Each slice is first divided by a power of two near its largest entry, so
    its norm lies in `[1, 2 sqrt(d)]`: slices of any magnitude from 1e-30 to
    1e38 are normalised exactly (the epsilon guards only zero slices, which
    stay zero).
    """
    x = x / power_of_two_scale(max_abs(x, axis=axis, keepdims=True))
    sq_norm = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(sq_norm, NORM_EPSILON))


def masked_logsumexp(x, mask, axis=1, add_one=False):
    """`log(sum(exp(x)))` over the entries where `mask` is true.

    With `add_one=True` it is `log(1 + sum(exp(x)))`, a smooth `max(0, ...)`
    (0 on an empty mask). Without it, an empty mask gives 0; the caller
    decides what an empty sum means. Either way the value and the gradient
    are finite: masked entries never reach `exp`, and the shift by the
    maximum is a constant.
    """
    masked = ops.where(mask, x, -float("inf"))
    shift = ops.max(masked, axis=axis, keepdims=True)
    shift = ops.where(ops.isfinite(shift), shift, 0.0)
    if add_one:
        shift = ops.maximum(shift, 0.0)
    shift = ops.stop_gradient(shift)
    total = ops.sum(ops.exp(ops.where(mask, x - shift, -float("inf"))), axis=axis, keepdims=True)
    if add_one:
        total = total + ops.exp(-shift)
    nonempty = ops.greater(total, 0.0)
    value = ops.where(nonempty, ops.log(ops.where(nonempty, total, 1.0)) + shift, 0.0)
    return ops.squeeze(value, axis=axis)


def cross_entropy(logits, one_hot):
    """Per-sample softmax cross-entropy from float32 logits and one-hot targets."""
    return ops.logsumexp(logits, axis=1) - ops.sum(logits * one_hot, axis=1)


def clip_keeping_nan(x, low, high):
    """`clip(x, low, high)` that keeps NaN entries NaN under every XLA code generator.

    XLA's CPU elemental emitters (`--xla_cpu_use_fusion_emitters=false`; the
    tests compile with them) lower a clamp to a compare-and-select that turns
    NaN into `low`: a NaN embedding would come out at a plausible distance
    such as 0 inside a compiled step, where inputs cannot be checked.
    """
    return ops.where(ops.isnan(x), x, ops.clip(x, low, high))


def reduced_keeping_nan(reduced, x, axis):
    """`reduced` (a max or min of `x` over `axis`), NaN where that slice of `x` holds a NaN.

    XLA's max and min reductions can drop NaN (TensorFlow's do on CPU, even
    at XLA's defaults): a NaN input would give a finite result inside a
    compiled step. `reduced` is computed by the caller (a plain `ops.max`, or
    one with an initial value), so any reduction of that kind can use this.
    """
    return ops.where(ops.any(ops.isnan(x), axis=axis), float("nan"), reduced)


def nan_unless_finite(values, inputs):
    """`values`, or NaN everywhere when `inputs` hold a NaN or an infinity.

    A masked selection (`where`, a min/max over masked entries, a hardest
    pair) can drop a NaN of the inputs and return a finite loss: inside a
    traced training step, where inputs cannot be checked, Keras'
    `TerminateOnNaN` would then never stop. The test is on the inputs
    themselves, never on a sum of them (which could overflow for valid
    large values), and passes `values` and their gradient through
    unchanged for finite inputs.

    Args:
        values: A float tensor (any shape), or a tuple of them (one test of
            `inputs` serves them all).
        inputs: The float tensor `values` were computed from.
    """
    finite = ops.all(ops.isfinite(inputs))
    if isinstance(values, tuple):
        return tuple(ops.where(finite, v, ops.cast(float("nan"), v.dtype)) for v in values)
    return ops.where(finite, values, ops.cast(float("nan"), values.dtype))
