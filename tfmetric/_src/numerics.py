"""NaN-free numeric building blocks (backend-agnostic, `keras.ops`)."""

from keras import ops

NORM_EPSILON = 1e-12


def safe_sqrt(squared):
    """Square root with a zero (not infinite) gradient at 0."""
    positive = ops.greater(squared, 0.0)
    return ops.where(positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0)


def l2_normalize(x, axis=-1):
    """L2 normalisation along `axis` with a finite value and gradient at zero."""
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
