"""Argument checks shared by every package: a `ValueError` naming the argument."""

import numbers

import keras

# Arguments are used in float32 (losses and heads compute in it): a number
# that is finite in float64 can be infinite (1e39) or zero (1e-50) there, and
# loss terms built from an argument are summed over a batch. Magnitudes of
# arguments are therefore kept within [1e-30, 1e30] (the range of embeddings
# tfmetric supports); squared ones within 1e15.
ARGUMENT_MAX = 1e30
ARGUMENT_MIN = 1e-30
SQUARE_MAX = 1e15


def check_number(value, name, allow_zero=True, allow_negative=False, maximum=None):
    """Validates a real number usable in float32 and returns it as a float.

    Args:
        value: The argument's value.
        name: The argument's name, used in the error message.
        allow_zero: Whether 0 is accepted. Defaults to `True`.
        allow_negative: Whether negative values are accepted. Defaults to
            `False`.
        maximum: A tighter bound on the magnitude than `1e30`, for arguments
            whose use (a square, a cosine margin) needs one. Defaults to
            `None`.

    Raises:
        ValueError: for a non-number (bools included), NaN, an infinity, a
            value out of the accepted range, a magnitude above `1e30` (or
            `maximum`; `1e39` is infinite in float32) or, for an argument that
            must be nonzero, below `1e-30` (`1e-50` is 0 in float32).
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
    limit = ARGUMENT_MAX if maximum is None else min(float(maximum), ARGUMENT_MAX)
    if abs(value) > limit:
        raise ValueError(
            f"`{name}` must have a magnitude of at most {limit:.3g} (it is used in float32 "
            f"computations whose results must stay finite); got {value!r}."
        )
    if not allow_zero and abs(value) < ARGUMENT_MIN:
        raise ValueError(
            f"`{name}` must have a magnitude of at least {ARGUMENT_MIN:.3g} (it is used in "
            f"float32, where smaller values vanish or overflow what they divide); got {value!r}."
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


def check_seed(seed, name="seed", maximum=2**32 - 1):
    """Validates the seed of a numpy or scikit-learn generator and returns it.

    A seed is None or an integer in `[0, maximum]` (bools rejected); scikit-learn
    takes up to `2**32 - 1`, numpy's `default_rng` any non-negative integer
    (`maximum=None`).
    """
    if seed is None:
        return None
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or seed < 0
        or (maximum is not None and seed > maximum)
    ):
        bound = "an integer >= 0" if maximum is None else f"an integer in [0, {maximum}]"
        raise ValueError(f"`{name}` must be None or {bound}; got {seed!r}.")
    return int(seed)


def check_tensorflow_backend(what):
    """Raises a `RuntimeError` unless Keras runs on TensorFlow (`what` needs it).

    SavedModel and TFLite export trace the model into a TensorFlow graph: it
    needs `KERAS_BACKEND=tensorflow`. Checked first, so that another backend
    gets this error rather than one from deep inside the export (a torch
    tensor that "requires grad") and nothing is written.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{what} needs the TensorFlow Keras backend (SavedModel and TFLite export trace "
            f"the model in TensorFlow); set KERAS_BACKEND=tensorflow before importing keras "
            f"(current backend: {backend})."
        )
