"""tfmetric._src.numerics.matmul: float32 products at full precision on every backend."""

import keras
import numpy as np
import pytest

from tfmetric import distances
from tfmetric._src import numerics


def test_matmul_matches_float64_product():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5)).astype("float32")
    b = rng.normal(size=(5, 3)).astype("float32")
    got = keras.ops.convert_to_numpy(numerics.matmul(a, b))
    np.testing.assert_allclose(got, a.astype("float64") @ b.astype("float64"), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's matmul precision setting")
def test_jax_products_ask_for_highest_precision_forward_and_backward():
    # On GPUs JAX's default precision runs float32 products in TF32; the CPU here cannot show
    # that rounding, so the check is on what the traced program asks for. Every dot of the
    # euclidean distance and of its gradient must carry Precision.HIGHEST.
    import jax

    x = np.ones((4, 3), "float32")

    def loss(v):
        return jax.numpy.sum(distances.Euclidean()(v))

    jaxpr = jax.make_jaxpr(jax.grad(loss))(x).jaxpr
    precisions = list(_dot_precisions(jaxpr))
    assert len(precisions) >= 3  # the product, and its two transposes in the gradient
    highest = jax.lax.Precision.HIGHEST
    assert all(p is not None and tuple(p) == (highest, highest) for p in precisions), precisions


def _dot_precisions(jaxpr):
    """The `precision` of every dot_general in `jaxpr` and its sub-programs."""
    from jax.extend import core

    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn.params["precision"]
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, core.ClosedJaxpr):
                    yield from _dot_precisions(sub.jaxpr)
                elif isinstance(sub, core.Jaxpr):
                    yield from _dot_precisions(sub)


def test_nan_survives_clamps_and_max_reductions_when_compiled():
    # XLA's CPU elemental emitters turn NaN into a clamp's bound, and TensorFlow's XLA max
    # reduction on CPU drops NaN: the helpers must keep it, and change nothing else
    # (compiled under TensorFlow and JAX; under PyTorch `backend_ops.jit` runs eagerly).
    import backend_ops

    x = np.array([[0.5, np.nan, -3.0], [2.0, -0.25, 0.75]], "float32")

    def both(v):
        return (
            numerics.clip_keeping_nan(v, -1.0, 1.0),
            numerics.reduced_keeping_nan(keras.ops.max(v, axis=1), v, axis=1),
            numerics.reduced_keeping_nan(keras.ops.min(v, axis=0), v, axis=0),
        )

    clipped, row_max, col_min = (keras.ops.convert_to_numpy(t) for t in backend_ops.jit(both)(x))
    expected = np.clip(x, -1.0, 1.0)  # numpy's clip keeps NaN
    np.testing.assert_array_equal(clipped, expected)
    np.testing.assert_array_equal(row_max, [np.nan, 2.0])
    np.testing.assert_array_equal(col_min, [0.5, np.nan, -3.0])
