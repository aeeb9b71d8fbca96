"""Inputs of the functional twin models: the embedder's input spec, one `keras.Input` per branch."""

import keras

__all__ = ["branch_inputs", "check_branch_data", "check_embedder", "input_spec", "unpack_inputs"]


def check_embedder(embedder):
    if not isinstance(embedder, keras.layers.Layer):
        raise TypeError(
            "`embedder` must be a Keras model or layer that maps inputs to embeddings; "
            f"got {type(embedder).__name__}."
        )
    return embedder


def _embedder_inputs(embedder):
    try:
        inputs = embedder.inputs
    except (AttributeError, ValueError):
        return None
    return inputs or None


def input_spec(embedder, input_shape, input_dtype):
    """The `(shape, dtype)` of one embedder input, without the batch axis.

    Taken from `input_shape` / `input_dtype` when given, else from the
    embedder's own `keras.Input` (a functional or `Sequential` model).
    """
    inputs = _embedder_inputs(embedder)
    if inputs is not None and len(inputs) != 1:
        raise ValueError(
            f"`embedder` must take one input tensor; it has {len(inputs)} inputs "
            f"({[tuple(t.shape) for t in inputs]})."
        )
    if input_shape is None:
        if inputs is None:
            raise ValueError(
                "`input_shape` is required: `embedder` has no known input shape (it is not a "
                "functional or Sequential model built on a `keras.Input`). Pass the shape of "
                "one sample, e.g. `input_shape=(28, 28, 1)`."
            )
        input_shape = tuple(inputs[0].shape[1:])
    else:
        if isinstance(input_shape, int) or not all(
            d is None or (isinstance(d, int) and d > 0) for d in input_shape
        ):
            raise ValueError(
                "`input_shape` must be the shape of one sample (a tuple of positive ints or "
                f"None, without the batch axis); got {input_shape!r}."
            )
        input_shape = tuple(input_shape)
    if input_dtype is None:
        input_dtype = inputs[0].dtype if inputs is not None else "float32"
    return input_shape, keras.backend.standardize_dtype(input_dtype)


def branch_inputs(names, shape, dtype):
    """One `keras.Input` per branch of a twin model, named after the branch."""
    return [keras.Input(shape=shape, dtype=dtype, name=name) for name in names]


def unpack_inputs(inputs, names):
    """The branch batches of a tuple/list (in order) or a dict keyed by branch name."""
    count = len(names)
    if isinstance(inputs, dict):
        missing = [name for name in names if name not in inputs]
        if missing:
            raise ValueError(f"`inputs` dict must have the keys {list(names)}; missing {missing}.")
        return [inputs[name] for name in names]
    if not isinstance(inputs, (list, tuple)) or len(inputs) != count:
        raise ValueError(
            f"`inputs` must be a tuple of {count} batches ({', '.join(names)}); got "
            f"{type(inputs).__name__}"
            + (f" of length {len(inputs)}." if isinstance(inputs, (list, tuple)) else ".")
        )
    return list(inputs)


def check_branch_data(x, names, sample_shape, argument="x"):
    """Refuses one array given where a twin model takes one batch per branch.

    A tuple, list or dict of batches, a dataset or a generator passes (Keras
    checks their structure). A single array, even one stacking the branches
    along its second axis, is a `ValueError` naming `argument`, the expected
    batches and, for a stacked array, how to split it.
    """
    shape = getattr(x, "shape", None)
    if x is None or isinstance(x, (list, tuple, dict)) or shape is None:
        return
    try:
        shape = tuple(None if d is None else int(d) for d in shape)
    except TypeError:
        return
    count = len(names)
    sample = tuple(sample_shape)
    one_batch = "(N, " + ", ".join(str(d) for d in sample) + ")" if sample else "(N,)"
    message = (
        f"`{argument}` must be a tuple of {count} batches ({', '.join(names)}), each of shape "
        f"{one_batch}, or a dict with those keys; got one array of shape {shape}."
    )
    fits = len(shape) == len(sample) + 2 and all(
        s is None or d is None or s == d for s, d in zip(sample, shape[2:], strict=True)
    )
    if fits and shape[1] == count:
        parts = ", ".join(f"{argument}[:, {i}]" for i in range(count))
        message += f" For branches stacked on axis 1, pass `({parts})`."
    elif fits:
        message += (
            f" Branches stacked on axis 1 would need shape (N, {count}, "
            + ", ".join(str(d) for d in sample)
            + f"): its second dimension is {shape[1]}, not {count}."
        )
    raise ValueError(message)
