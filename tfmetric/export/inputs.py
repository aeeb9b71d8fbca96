"""Model inputs given to an export: arrays, or `.npz` files holding them."""

import os

import numpy as np

from tfmetric._src import files

__all__ = ["check_inputs", "load_inputs", "load_npz"]


def load_npz(path, name):
    """Reads every array of an `.npz` file (no pickles); errors name the argument `name`."""
    return files.read_npz(path, name)


def load_inputs(source, input_shape, name="representative"):
    """Loads model inputs from an `.npz` path (key `inputs`) or an array.

    Raises:
        ValueError: naming `name` if the inputs do not fit `input_shape`.
    """
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        data = load_npz(source, name)
        if "inputs" not in data:
            raise ValueError(f"`{name}` file {os.fspath(source)!r} has no `inputs` array.")
        source = data["inputs"]
    inputs = np.asarray(source)
    check_inputs(inputs, input_shape, name)
    return inputs.astype("float32")


def check_inputs(inputs, input_shape, name):
    """Raises a ValueError naming `name` unless `inputs` is a non-empty batch of `input_shape`."""
    if inputs.ndim != len(input_shape) + 1 or any(
        want is not None and want != got
        for want, got in zip(input_shape, inputs.shape[1:], strict=True)
    ):
        raise ValueError(
            f"`{name}` inputs have shape {inputs.shape}; the model takes (batch, "
            f"{', '.join(str(d) for d in input_shape)})."
        )
    if len(inputs) == 0:
        raise ValueError(f"`{name}` holds no inputs.")
    if not np.issubdtype(inputs.dtype, np.number):
        raise ValueError(f"`{name}` inputs must be numbers; got dtype {inputs.dtype}.")
