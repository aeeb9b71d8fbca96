"""Fuzz: every distance of `tfmetric.distances` on hostile input.

The contract: a `ValueError`/`TypeError` naming the argument, or a finite
value equal to a float64 numpy reference written from the definitions.
"""

import fuzz_references
import numpy as np
import pytest
from fuzz_strategies import assert_names, embedding_batches, poisoned
from hypothesis import given
from hypothesis import strategies as st

from tfmetric import distances

NAMES = ["euclidean", "squared_euclidean", "cosine", "manhattan", "inner_product", "minkowski",
         "jaccard"]


@pytest.mark.parametrize("name", NAMES)
@given(batch=embedding_batches(scaled=False), rank=st.sampled_from([0, 1, 3]))
def test_wrong_rank_names_the_argument(name, batch, rank):
    x, _ = batch
    bad = {0: x[0, 0], 1: x[0], 3: x[:, :, None]}[rank]
    distance = distances.get(name)
    for call, argument in ((lambda: distance(bad, x), "x"), (lambda: distance(x, bad), "y")):
        with pytest.raises(ValueError) as error:
            call()
        assert_names(error.value, argument)


@pytest.mark.parametrize("name", NAMES)
@given(batch=embedding_batches(scaled=False), dtype=st.sampled_from(["bool", "complex64"]))
def test_non_real_dtype_names_the_argument(name, batch, dtype):
    x, _ = batch
    with pytest.raises(TypeError) as error:
        distances.get(name)(x.astype(dtype), x)
    assert_names(error.value, "x")


@pytest.mark.parametrize("name", NAMES)
@given(a=embedding_batches(scaled=False), b=embedding_batches(scaled=False))
def test_mismatched_embedding_sizes_name_both_arguments(name, a, b):
    (x, _), (y, _) = a, b
    if x.shape[1] == y.shape[1]:
        y = np.concatenate([y, y], axis=1)
    with pytest.raises(ValueError) as error:
        distances.get(name)(x, y)
    assert "`x` and `y`" in str(error.value)


@given(identifier=st.one_of(st.text(max_size=12), st.integers(), st.none(),
                            st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)))
def test_get_rejects_unknown_identifiers(identifier):
    if isinstance(identifier, str) and identifier.lower().replace("-", "_") in NAMES:
        return
    with pytest.raises(ValueError) as error:
        distances.get(identifier)
    assert_names(error.value, "distance")


# name, config, largest supported |exponent| of the scale (squares overflow past ~1e19).
CASES = [
    ("euclidean", {}, 30),
    ("squared_euclidean", {}, 17),
    ("cosine", {}, 30),
    ("manhattan", {}, 30),
    ("inner_product", {}, 17),
    ("minkowski", {"p": 1.5}, 30),
    ("minkowski", {"p": 3.0}, 30),
    ("minkowski", {"p": 100.0}, 30),
    ("minkowski", {"p": float("inf")}, 30),
    ("jaccard", {}, 30),
    ("jaccard", {"weighted": True}, 30),
]
IDS = [f"{name}{config}" for name, config, _ in CASES]


def _build(name, config):
    return distances.get({"class_name": type(distances.get(name)).__name__, "config": config})


def _tolerance(name, x, y):
    """Absolute float32 error bound: GEMM cancellation is relative to the largest magnitude."""
    scale = float(max(np.abs(x).max(), np.abs(y).max()))
    d = x.shape[1]
    if name in ("squared_euclidean", "inner_product"):
        return 1e-5 * d * scale**2
    if name in ("cosine", "jaccard"):
        return 1e-4
    return 2e-3 * np.sqrt(d) * scale


@pytest.mark.parametrize(("name", "config", "limit"), CASES, ids=IDS)
@given(data=st.data())
def test_values_match_a_float64_reference_from_1e_minus_30_to_1e30(name, config, limit, data):
    exponent = data.draw(st.integers(-limit, limit), label="exponent")
    x, _ = data.draw(embedding_batches(scaled=False), label="x")
    y, _ = data.draw(embedding_batches(min_dim=x.shape[1], max_dim=x.shape[1], scaled=False))
    x, y = x * np.float32(10.0**exponent), y * np.float32(10.0**exponent)
    if name == "jaccard" and not config:
        x, y = np.abs(x), np.abs(y)  # the set form is defined for non-negative (multi-hot) vectors
    distance = _build(name, config)
    expected = fuzz_references.pairwise(x, y, name, **config)
    got = np.asarray(distance(x, y))
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.all(np.isfinite(got)), got
    atol = _tolerance(name, x, y)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=atol)
    rows = min(len(x), len(y))
    paired = np.asarray(distance.paired(x[:rows], y[:rows]))
    np.testing.assert_allclose(paired, np.diagonal(expected)[:rows], rtol=1e-4, atol=atol)


@pytest.mark.parametrize(("name", "config", "limit"), CASES, ids=IDS)
@given(data=st.data())
def test_nan_or_inf_input_names_the_argument(name, config, limit, data):
    x, _ = data.draw(embedding_batches(scaled=False), label="x")
    bad = data.draw(poisoned(x), label="bad")
    argument = data.draw(st.sampled_from(["x", "y"]), label="argument")
    distance = _build(name, config)
    calls = {"x": lambda: distance(bad, x), "y": lambda: distance(x, bad)}
    with pytest.raises(ValueError) as error:
        calls[argument]()
    assert_names(error.value, argument)
    with pytest.raises(ValueError) as error:
        distance.paired(x, bad) if argument == "y" else distance.paired(bad, x)
    assert_names(error.value, argument)


_JIT_SHAPE = (4, 3)


_JITTED = {}


def _jitted(name, config):
    """The XLA-compiled pairwise and paired calls of a distance (compiled once: fixed shape)."""
    import tensorflow as tf

    key = name, str(config)
    if key not in _JITTED:
        spec = tf.TensorSpec(_JIT_SHAPE, tf.float32)
        distance = _build(name, config)
        _JITTED[key] = tuple(
            tf.function(fn, input_signature=[spec, spec], jit_compile=True)
            for fn in (distance.__call__, distance.paired)
        )
    return _JITTED[key]


@pytest.mark.parametrize(("name", "config", "limit"), CASES, ids=IDS)
@given(data=st.data())
def test_nan_under_xla_never_comes_out_as_a_plausible_distance(name, config, limit, data):
    """Under `jit_compile` values cannot be checked: a NaN row must come out NaN, never 0."""
    del limit
    seed = data.draw(st.integers(0, 2**16), label="seed")
    x = np.random.default_rng(seed).normal(size=_JIT_SHAPE).astype("float32")
    row = data.draw(st.integers(0, _JIT_SHAPE[0] - 1), label="row")
    bad = x.copy()
    bad[row, data.draw(st.integers(0, _JIT_SHAPE[1] - 1), label="column")] = np.nan
    pairwise, paired = _jitted(name, config)
    matrix = pairwise(bad, x).numpy()
    assert np.all(np.isnan(matrix[row])), matrix
    assert np.isnan(paired(bad, x).numpy()[row])
