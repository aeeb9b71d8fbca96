"""The row-wise argmin/argmax of the triplet-mining kernel against numpy's."""

import numpy as np
import pytest
import tensorflow as tf

from tfmetric._src import inputs, triplet_mining


def _cases():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, size=(12, 9)).astype("float32")  # many ties
    mask = rng.random((12, 9)) < 0.5
    mask[3] = False  # a row without any masked-in entry
    mask[4] = True
    values[5] = -2.0  # negative values, all tied
    return values, mask


@pytest.mark.parametrize("jit", [False, True])
def test_row_argmin_argmax_match_numpy(jit):
    values, mask = _cases()
    both = tf.function(
        lambda v, m: (triplet_mining.row_argmin(v, m), triplet_mining.row_argmax(v, m)),
        jit_compile=jit,
    )
    low, high = both(tf.constant(values), tf.constant(mask))
    np.testing.assert_array_equal(low, np.argmin(np.where(mask, values, np.inf), axis=1))
    np.testing.assert_array_equal(high, np.argmax(np.where(mask, values, -np.inf), axis=1))
    assert low.numpy()[3] == 0 and high.numpy()[3] == 0


def test_first_occurrence_ids():
    labels = np.array([7, 3, 7, 9, 3, 3, 100000])
    np.testing.assert_array_equal(inputs.first_occurrence_ids(labels), [0, 1, 0, 3, 1, 1, 6])
