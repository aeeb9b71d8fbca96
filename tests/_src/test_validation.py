"""Argument checks of the internal layer."""

import numpy as np
import pytest

from tfmetric._src import validation


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1", None, True])
def test_check_number_rejects(bad):
    with pytest.raises(ValueError, match="`margin`"):
        validation.check_number(bad, "margin")


def test_check_number_bounds():
    assert validation.check_number(0, "m") == 0.0
    assert validation.check_number(np.float32(0.5), "m") == 0.5
    assert validation.check_number(-2, "base", allow_negative=True) == -2.0
    with pytest.raises(ValueError, match="> 0"):
        validation.check_positive(0.0, "scale")


def test_check_int_and_ints():
    assert validation.check_int(np.int64(3), "k") == 3
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="`k`"):
            validation.check_int(bad, "k")
    assert validation.check_ints(5, "k") == (5,)
    assert validation.check_ints([1, 5], "k") == (1, 5)
    for bad in ([], [1, 0], 1.5):
        with pytest.raises(ValueError, match="`k`"):
            validation.check_ints(bad, "k")


def test_check_choice_and_bool():
    assert validation.check_choice("a", "mode", ("a", "b")) == "a"
    with pytest.raises(ValueError, match="`mode`"):
        validation.check_choice("c", "mode", ("a", "b"))
    with pytest.raises(TypeError, match="`flag`"):
        validation.check_bool(1, "flag")
