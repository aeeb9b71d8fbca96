"""Argument checks shared by every package: a `ValueError` naming the argument."""

import numbers


def check_number(value, name, allow_zero=True, allow_negative=False):
    """Validates a finite real number and returns it as a float.

    Args:
        value: The argument's value.
        name: The argument's name, used in the error message.
        allow_zero: Whether 0 is accepted. Defaults to `True`.
        allow_negative: Whether negative values are accepted. Defaults to
            `False`.

    Raises:
        ValueError: for a non-number (bools included), NaN, an infinity, or a
            value out of the accepted range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number; got {value!r}.")
    value = float(value)
    if value != value:
        raise ValueError(f"`{name}` must be a number; got {value!r}.")
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    if allow_negative:
        return value
    if value < 0 or (not allow_zero and value == 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be {bound}; got {value!r}.")
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
