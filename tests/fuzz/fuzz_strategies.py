"""Hypothesis strategies for hostile numeric input, shared by the fuzz suite."""

import math

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

NON_FINITE = (math.nan, math.inf, -math.inf)

# Magnitudes from 1e-30 to 1e30: the range tfmetric's float32 computations support.
log_scales = st.integers(min_value=-30, max_value=30)


def arrays(draw, shape, scale_exponent=0, dtype="float32"):
    """A float array of `shape` with standard-normal entries scaled by `10**scale_exponent`."""
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    values = np.random.default_rng(seed).normal(size=shape) * 10.0**scale_exponent
    return values.astype(dtype)


@st.composite
def embedding_batches(draw, min_rows=1, max_rows=6, min_dim=1, max_dim=5, scaled=True):
    """`(x, exponent)`: a float32 `(n, d)` batch scaled by `10**exponent` (exponent 0 unscaled)."""
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(min_dim, max_dim))
    exponent = draw(log_scales) if scaled else 0
    return arrays(draw, (n, d), exponent), exponent


@st.composite
def poisoned(draw, array):
    """A copy of `array` (at least one element) with one entry set to NaN, +Inf or -Inf."""
    array = np.array(array, copy=True)
    index = draw(st.integers(0, array.size - 1))
    array.flat[index] = draw(st.sampled_from(NON_FINITE))
    return array


def assert_names(error, *names):
    """Asserts that an exception's message names at least one of `names` (as `` `name` ``)."""
    message = str(error)
    assert any(f"`{name}`" in message or f"`{name}=" in message for name in names), message


def examples(ci):
    """Settings for a test whose examples are expensive: `ci` examples in the CI profile.

    The `dev` profile runs 30 times as many. Use as a decorator above `@given`.
    """
    scale = 1 if settings().max_examples <= 20 else 30
    return settings(max_examples=ci * scale)
