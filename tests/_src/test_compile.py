"""XLA options of the kernels' `jax.jit` on CPU (`tfmetric._src.compile`)."""

import numpy as np
import pytest

from tfmetric._src import compile as backend_compile

jax = pytest.importorskip("jax")


@pytest.fixture
def fresh_options(monkeypatch):
    backend_compile._jax_cpu_options.cache_clear()
    yield monkeypatch
    backend_compile._jax_cpu_options.cache_clear()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are for XLA on CPU")
def test_single_matrix_products_option_is_accepted_and_keeps_values(fresh_options):
    # This jaxlib accepts the option; a kernel compiled with it computes what
    # numpy does (matrix product, then elementwise steps and a row reduction).
    options = backend_compile._jax_cpu_options()
    assert options == backend_compile._JAX_CPU_OPTIONS
    rng = np.random.default_rng(0)
    q, g = rng.integers(-3, 4, (64, 16)).astype(np.float32), rng.integers(-3, 4, (300, 16))
    g = g.astype(np.float32)

    def kernel(q, g):
        scores = 2 * q @ g.T - (g * g).sum(axis=1)[None, :]
        return scores.max(axis=1), scores

    best, scores = jax.jit(kernel, compiler_options=options)(q, g)
    expected = 2 * q @ g.T - (g * g).sum(axis=1)[None, :]
    np.testing.assert_array_equal(np.asarray(scores), expected)  # small integers: exact
    np.testing.assert_array_equal(np.asarray(best), expected.max(axis=1))


def test_an_option_this_jaxlib_rejects_falls_back_to_the_defaults(fresh_options):
    fresh_options.setattr(backend_compile, "_JAX_CPU_OPTIONS", {"xla_no_such_option": "1"})
    assert backend_compile._jax_cpu_options() is None


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_jax_on_cpu_only_for_jax_on_a_cpu(backend, monkeypatch):
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    expected = backend == "jax" and jax.default_backend() == "cpu"
    assert backend_compile.jax_on_cpu() is expected
