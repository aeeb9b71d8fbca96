"""Argument checks shared by every package: a `ValueError` naming the argument."""

import numbers

import numpy as np

# Arguments are used in float32 (losses and heads compute in it): a number
# that is finite in float64 can be infinite (1e39) or zero (1e-50) there.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
# The largest magnitude whose square is finite in float32 (for squared margins).
SQUARE_MAX = float(np.sqrt(np.finfo(np.float32).max))
# The largest scale of cosine logits (|cos| <= 1, cosine margins <= 2): logits
# and their differences in a softmax stay finite in float32.
LOGIT_SCALE_MAX = FLOAT32_MAX / 8.0


def check_number(value, name, allow_zero=True, allow_negative=False, maximum=None):
    """Validates a real number usable in float32 and returns it as a float.

    Args:
        value: The argument's value.
        name: The argument's name, used in the error message.
        allow_zero: Whether 0 is accepted. Defaults to `True`.
        allow_negative: Whether negative values are accepted. Defaults to
            `False`.
        maximum: The largest accepted magnitude, for arguments whose use
            (a square, an exponential) overflows float32 before its largest
            value; `None` for float32's largest value. Defaults to `None`.

    Raises:
        ValueError: for a non-number (bools included), NaN, an infinity, a
            value out of the accepted range, a magnitude beyond float32
            (`1e39`) or a nonzero magnitude below its smallest normal number
            (`1e-50`, which would become 0 or lose its precision).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number; got {value!r}.")
    value = float(value)
    if value != value:
        raise ValueError(f"`{name}` must be a number; got {value!r}.")
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    if not allow_negative and (value < 0 or (not allow_zero and value == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be {bound}; got {value!r}.")
    if not allow_zero and value == 0:
        raise ValueError(f"`{name}` must be nonzero; got {value!r}.")
    limit = FLOAT32_MAX if maximum is None else min(float(maximum), FLOAT32_MAX)
    if abs(value) > limit:
        why = " (it is used in float32)" if maximum is None else ""
        raise ValueError(
            f"`{name}` must have a magnitude of at most {limit:.3g}{why}; got {value!r}."
        )
    if value != 0 and abs(value) < FLOAT32_TINY:
        raise ValueError(
            f"`{name}` must be 0 or have a magnitude of at least {FLOAT32_TINY:.3g} (float32's "
            f"smallest normal number: it is used in float32); got {value!r}."
        )
    return value


def check_positive(value, name):
    """Validates a finite number `> 0`."""
    return check_number(value, name, allow_zero=False)


def check_int(value, name, minimum=1):
    """Validates an integer `>= minimum` (bools rejected) and returns it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def check_ints(values, name, minimum=1):
    """Validates one integer or a non-empty sequence of them; returns a tuple."""
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        values = (values,)
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(
            f"`{name}` must be an integer or a sequence of integers; got {values!r}."
        ) from None
    if not values:
        raise ValueError(f"`{name}` must hold at least one value.")
    return tuple(check_int(value, name, minimum) for value in values)


def check_choice(value, name, choices):
    """Validates that `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}.")
    return value


def check_bool(value, name):
    """Validates a bool (not merely a truthy value)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool; got {value!r}.")
    return value
