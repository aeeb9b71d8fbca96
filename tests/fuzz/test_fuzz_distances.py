"""Fuzz: every distance of `tfmetric.distances` on hostile input.

The contract: a `ValueError`/`TypeError` naming the argument, or a finite
value equal to a float64 numpy reference written from the definitions.
"""

import numpy as np
import pytest
from fuzz_strategies import assert_names, embedding_batches
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
