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


def _both(jit):
    return tf.function(
        lambda v, m: (triplet_mining.row_argmin(v, m), triplet_mining.row_argmax(v, m)),
        jit_compile=jit,
    )


def _check_against_numpy(both, values, mask):
    low, high = both(tf.constant(values), tf.constant(mask))
    np.testing.assert_array_equal(low, np.argmin(np.where(mask, values, np.inf), axis=1))
    np.testing.assert_array_equal(high, np.argmax(np.where(mask, values, -np.inf), axis=1))
    return low.numpy(), high.numpy()


@pytest.mark.parametrize("jit", [False, True])
def test_row_argmin_argmax_match_numpy(jit):
    values, mask = _cases()
    low, high = _check_against_numpy(_both(jit), values, mask)
    assert low[3] == 0 and high[3] == 0


@pytest.mark.parametrize("columns", [1500, 1031, 2048])
@pytest.mark.parametrize("jit", [False, True])
def test_tiled_row_argmin_argmax_match_numpy(columns, jit):
    # Wide rows take the tiled search (tiles of 250 / 256 columns; 1031 is prime: untiled).
    rng = np.random.default_rng(columns)
    values = rng.integers(0, 50, size=(16, columns)).astype("float32")  # ties in every row
    mask = rng.random((16, columns)) < 0.3
    mask[0] = False  # no masked-in entry: column 0
    mask[1, :] = False
    mask[1, -1] = True  # the only entry is the last column
    mask[2] = True
    values[2, 700:] = -5.0  # the minimum sits in a later tile (column 900)...
    values[2, 900] = -6.0  # ...the maximum's first copy in an earlier one
    values[3] = 7.0  # one value everywhere
    both = _both(jit)
    low, high = _check_against_numpy(both, values, mask)
    assert low[2] == 900 and high[2] < 700 and low[0] == 0 and high[1] == columns - 1
    nan = values.copy()
    nan[4, 3] = np.nan  # a NaN row still gives a column in range (gathers stay in range)
    low, high = both(tf.constant(nan), tf.constant(np.ones_like(mask)))
    assert 0 <= low.numpy()[4] < columns and 0 <= high.numpy()[4] < columns
    if not jit:  # NaN propagates through the eager minimum: the last column
        assert low.numpy()[4] == columns - 1 and high.numpy()[4] == columns - 1


def test_tiled_row_argmin_with_unknown_number_of_rows():
    # A (B, N) matrix against references: N static (tiled), B unknown while tracing.
    rng = np.random.default_rng(1)
    values = rng.integers(0, 9, size=(5, 2048)).astype("float32")
    mask = rng.random((5, 2048)) < 0.5
    low = tf.function(
        triplet_mining.row_argmin,
        input_signature=[tf.TensorSpec((None, 2048)), tf.TensorSpec((None, 2048), tf.bool)],
        jit_compile=True,
    )(values, mask)
    np.testing.assert_array_equal(low, np.argmin(np.where(mask, values, np.inf), axis=1))


def test_tile_width():
    assert triplet_mining.tile_width(4096) == 256
    assert triplet_mining.tile_width(1500) == 250
    assert triplet_mining.tile_width(1031) is None  # prime
    assert triplet_mining.tile_width(512) is None  # narrow: one pass
    assert triplet_mining.tile_width(None) is None


def test_first_occurrence_ids():
    labels = np.array([7, 3, 7, 9, 3, 3, 100000])
    np.testing.assert_array_equal(inputs.first_occurrence_ids(labels), [0, 1, 0, 3, 1, 1, 6])
