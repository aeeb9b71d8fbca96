"""Validation of labels and embeddings, for tensors and numpy arrays.

`check_labels` / `check_label_array` are the one label validator of tfmetric:
integer class labels of shape `(n,)` or `(n, 1)`; floating-point labels are
accepted when their values are integers (`[0., 1., 2.]`), and any other
dtype or a non-integer value raises a `ValueError` naming the argument, as
does a float label too large for its dtype to tell consecutive integers apart
(beyond 2**24 in float32, 2**53 in float64: 2**70 and 2**70 + 1 are the same
number there, and int64 cannot hold them). Values are only known eagerly:
inside a traced function float labels are cast.
"""

import keras
import numpy as np
from keras import ops


def static_value(x):
    """The value of `x` as a numpy array when it is known (eager), else `None`."""
    if isinstance(x, keras.KerasTensor):
        return None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.is_tensor(x) and not tf.executing_eagerly():
            return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # a traced (symbolic) tensor has no value yet
        return None


def _is_float(dtype):
    return dtype.startswith(("float", "bfloat"))


def _label_dtype_error(name, dtype):
    if getattr(dtype, "kind", "") in "USO":
        return ValueError(
            f"`{name}` must hold integer class labels; got dtype {dtype} (strings or objects). "
            "Map them to integers (e.g. `np.unique(labels, return_inverse=True)[1]`)."
        )
    return ValueError(
        f"`{name}` must hold integer class labels; got dtype {dtype}. "
        "Cast them to int (e.g. `labels.astype('int64')`)."
    )


def _non_integer_error(name, values):
    bad = values[~np.isfinite(values) | (values != np.round(values))]
    return ValueError(
        f"`{name}` must hold integer class labels; got non-integer values such as {bad.flat[0]!r}."
    )


def _exact_integer_limit(dtype):
    """`2**(mantissa bits + 1)`: below it a float dtype holds every integer exactly."""
    return 2.0 ** (np.finfo(dtype).nmant + 1) if dtype != "bfloat16" else 2.0**8


def _check_float_label_values(name, values, dtype):
    """Float labels must be integers that `dtype` (and int64) represent exactly."""
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values) & (values == np.round(values))):
        raise _non_integer_error(name, values)
    limit = _exact_integer_limit(dtype)
    too_large = np.abs(values) >= limit
    if np.any(too_large):
        raise ValueError(
            f"`{name}` holds float labels as large as {values[too_large].flat[0]:.6g}: {dtype} "
            f"cannot tell integers beyond 2**{int(np.log2(limit))} apart, so distinct classes "
            "could merge. Pass integer labels (e.g. `labels.astype('int64')`) or renumber the "
            "classes."
        )


def _truncates_int64():
    """Whether the backend turns host int64 values into int32 tensors (JAX without x64)."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return not jax.config.jax_enable_x64


def check_host_labels(labels, name="labels", renumber=False):
    """Checks labels given as host values (arrays, lists) before any backend converts them.

    Tensors are returned as they are (`check_labels` checks them). Host
    values are checked where the backend's conversion would lose what the
    check needs: a non-numeric dtype (strings) raises the label dtype error on
    every backend, float labels are checked in their own precision (float64
    holds integers up to 2**53) and returned as int64, and integers beyond
    int32 raise where the backend would truncate them to int32 (JAX without
    `jax_enable_x64`: `2**32 + 5` would become `5` and merge two classes).

    Args:
        labels: Labels as given by the user.
        name: The argument's name, used in error messages.
        renumber: Where only label equality within these labels matters (a
            loss called on a batch), integers beyond int32 are renumbered
            (`np.unique`'s inverse) instead of raising. Defaults to `False`.

    Raises:
        ValueError: naming `name`, as above.
    """
    if ops.is_tensor(labels) or isinstance(labels, (keras.KerasTensor, keras.Variable)):
        return labels
    values = np.asarray(labels)
    if values.dtype == bool or values.dtype.kind not in "iuf":
        raise _label_dtype_error(name, values.dtype)
    if values.dtype.kind == "f":
        if values.size:
            _check_float_label_values(name, values, values.dtype.name)
        values = values.astype(np.int64)
    if values.size and _truncates_int64():
        info = np.iinfo(np.int32)
        outside = (values < info.min) | (values > info.max)
        if np.any(outside) and renumber:
            return np.unique(values, return_inverse=True)[1].reshape(values.shape).astype("int32")
        if np.any(outside):
            raise ValueError(
                f"`{name}` holds labels beyond int32, such as {values[outside].flat[0]}: JAX "
                "without `jax_enable_x64` truncates them to int32, which can merge classes. "
                "Renumber the classes (e.g. `np.unique(labels, return_inverse=True)[1]`) or "
                "enable 64-bit types."
            )
    return values


def check_fit_labels(labels, name="y"):
    """Checks labels given in memory to `fit` / `evaluate` before Keras converts them.

    Keras converts in-memory labels to backend tensors before a model's
    `compute_loss` sees them: under JAX without `jax_enable_x64`, int64
    labels beyond int32 are truncated there (`2**32 + 5` becomes `5`, and two
    classes merge). Arrays, lists and objects with `__array__` are checked by
    `check_host_labels`; datasets and generators are left alone (reading them
    would consume data).

    Args:
        labels: The `y` (or `validation_data` labels) given to `fit`.
        name: The argument's name, used in error messages. Defaults to `"y"`.

    Returns:
        The checked labels as a numpy array (float labels with integer
        values as int64), or `None` for labels that are not in memory.

    Raises:
        ValueError: naming `name`, as `check_host_labels`.
    """
    if labels is None or (
        not isinstance(labels, (np.ndarray, list, tuple)) and not hasattr(labels, "__array__")
    ):
        return None
    return np.asarray(check_host_labels(np.asarray(labels), name))


def validation_labels(validation_data):
    """The labels of a `validation_data` tuple `(x, y[, sample_weight])`, else `None`."""
    if isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2:
        return validation_data[1]
    return None


def check_labels(labels, name="labels", size=None, size_name="embeddings"):
    """Validates class labels as a tensor; returns int32/int64 labels of shape `(n,)`.

    Args:
        labels: Labels of shape `(n,)` or `(n, 1)`: integers, or floats whose
            values are integers.
        name: The argument's name, used in error messages.
        size: The expected number of labels, or `None`.
        size_name: What `size` counts, used in error messages.

    Raises:
        ValueError: naming `name` for another dtype, a non-integer value
            (checked where values are known), a wrong shape or length.
    """
    labels = ops.convert_to_tensor(check_host_labels(labels, name))
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if _is_float(dtype):
        values = static_value(labels)
        if values is not None and values.size:
            _check_float_label_values(name, values, dtype)
        labels = ops.cast(labels, "int64")
    elif not dtype.startswith(("int", "uint")):
        raise _label_dtype_error(name, dtype)
    elif dtype not in ("int32", "int64"):
        labels = ops.cast(labels, "int64")  # a bijection: label equality is kept
    if len(labels.shape) == 2 and labels.shape[1] == 1:
        labels = ops.reshape(labels, (-1,))
    if len(labels.shape) != 1:
        raise ValueError(
            f"`{name}` must be class labels of shape (batch,) or (batch, 1); got shape "
            f"{tuple(labels.shape)}."
        )
    if size is not None and labels.shape[0] is not None and labels.shape[0] != size:
        raise ValueError(
            f"`{name}` has {labels.shape[0]} labels but `{size_name}` has {size} rows; "
            "they must match."
        )
    return labels


def check_label_array(labels, name="labels", size=None, size_name="embeddings"):
    """Validates class labels as a numpy array; returns int64 labels of shape `(n,)`.

    Same rules as `check_labels`, on values that are always known.
    """
    labels = np.asarray(labels)
    if labels.dtype != bool and np.issubdtype(labels.dtype, np.floating):
        if labels.size:
            _check_float_label_values(name, labels, labels.dtype.name)
    elif labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise _label_dtype_error(name, labels.dtype)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"`{name}` must be class labels of shape (n,) or (n, 1); got shape {labels.shape}."
        )
    if size is not None and labels.shape[0] != size:
        raise ValueError(
            f"`{name}` has {labels.shape[0]} labels but `{size_name}` has {size} rows; "
            "they must match."
        )
    return labels.astype(np.int64)


def check_host_numbers(x, name, expected="floating-point embeddings"):
    """Host values of a non-numeric dtype (strings) raise before a backend converts them.

    JAX and torch cannot hold strings in a tensor: without this check their
    conversion fails with a backend error that names no argument.

    Raises:
        ValueError: "`name` must be {expected}; got dtype ...".
    """
    if ops.is_tensor(x) or isinstance(x, (keras.KerasTensor, keras.Variable)):
        return x
    dtype = np.asarray(x).dtype
    if dtype.kind not in "biuf" and not is_float_array_dtype(dtype):
        raise ValueError(f"`{name}` must be {expected}; got dtype {dtype}.")
    return x


def check_embeddings(embeddings, name="embeddings", allow_empty=True):
    """Validates a `(B, D)` floating-point tensor; returns it in float32.

    Values are checked for NaN/Inf where they are known (eager calls): a
    traced training step cannot raise, and Keras' `TerminateOnNaN` covers it.

    Raises:
        ValueError: naming `name` for a wrong rank, a non-floating dtype, an
            empty batch (unless `allow_empty`), no features (D = 0) or NaN/Inf
            values.
    """
    embeddings = ops.convert_to_tensor(check_host_numbers(embeddings, name))
    if len(embeddings.shape) != 2:
        raise ValueError(
            f"`{name}` must be 2-D embeddings of shape (batch, dim); got shape "
            f"{tuple(embeddings.shape)}."
        )
    dtype = keras.backend.standardize_dtype(embeddings.dtype)
    if not _is_float(dtype):
        raise ValueError(f"`{name}` must be floating-point embeddings; got dtype {dtype}.")
    if embeddings.shape[0] == 0 and not allow_empty:
        raise ValueError(f"`{name}` is empty (batch size 0); it needs samples.")
    if embeddings.shape[1] == 0:
        raise ValueError(
            f"`{name}` must have at least one feature; got shape {tuple(embeddings.shape)}."
        )
    embeddings = ops.cast(embeddings, "float32")
    values = static_value(embeddings)
    if values is not None and not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return embeddings


def check_labels_and_embeddings(labels, embeddings, names=("labels", "embeddings")):
    """Validates a labelled batch; returns `(labels, embeddings)`.

    Labels become int32/int64 of shape `(B,)` and embeddings float32 of shape
    `(B, D)`, with at least one sample. `names` are the two arguments' names
    in the caller's API (`("y_true", "y_pred")` for a `keras.losses.Loss`).
    """
    label_name, embedding_name = names
    embeddings = ops.convert_to_tensor(check_host_numbers(embeddings, embedding_name))
    if len(embeddings.shape) != 2:
        raise ValueError(
            f"`{embedding_name}` must be 2-D embeddings of shape (batch, dim); got shape "
            f"{tuple(embeddings.shape)}."
        )
    labels = check_labels(labels, label_name, embeddings.shape[0], embedding_name)
    return labels, check_embeddings(embeddings, embedding_name, allow_empty=False)


def is_float_array_dtype(dtype):
    """Whether a numpy dtype holds floats, `ml_dtypes`' bfloat16 (what a
    `mixed_bfloat16` model's `predict` returns) included."""
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def check_embedding_array(x, name, allow_empty=False):
    """Returns `x` as a finite float32 numpy array of shape `(n, d)`.

    Raises:
        ValueError: naming `name` for a wrong rank, no rows, or NaN/Inf values.
        TypeError: naming `name` for non-numeric values.
    """
    x = np.asarray(x)
    if not (is_float_array_dtype(x.dtype) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"`{name}` must hold real numbers; got dtype {x.dtype}.")
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array of embeddings (n, dim); got shape {x.shape}."
        )
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"`{name}` must hold at least one embedding; got shape {x.shape}.")
    if x.shape[1] == 0:
        raise ValueError(f"`{name}` must have at least one feature; got shape {x.shape}.")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
        raise ValueError(f"`{name}` contains NaN or infinite values (in {bad} rows).")
    return x


def check_same_dim(a, b, name_a, name_b):
    """Checks that two `(n, d)` arrays or tensors share `d` (where it is known)."""
    dim_a, dim_b = a.shape[1], b.shape[1]
    if dim_a is not None and dim_b is not None and dim_a != dim_b:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same embedding size; got {dim_a} and {dim_b}."
        )


def label_masks(labels):
    """Returns boolean `(positive, negative)` masks of shape `(B, B)`.

    `positive[i, j]` is true when `i != j` share a label; `negative[i, j]` when
    their labels differ.
    """
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    not_self = ops.logical_not(ops.eye(ops.shape(labels)[0], dtype="bool"))
    return ops.logical_and(same, not_self), ops.logical_not(same)


def first_occurrence_ids(labels):
    """Maps labels to the index of the first sample holding the same label.

    The result lies in `[0, B)`, so it survives Keras' cast of `y_true` to
    float32 exactly, whatever the magnitude of the original label values.
    """
    size = ops.shape(labels)[0]
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    # The first matching column by an integer min (a `(value, index)` argmax
    # reduction is far slower under XLA on CPU).
    columns = ops.expand_dims(ops.arange(size, dtype="int32"), 0)
    return ops.min(ops.where(same, columns, size), axis=1)


def check_finite(value, name):
    """Raises a `ValueError` naming `name` for NaN/Inf values, where they are known (eager)."""
    known = static_value(value)
    if known is not None and not np.all(np.isfinite(known)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")


def check_vector(value, name, size, integer):
    """Validates one value per batch row, shape `(B,)` or `(B, 1)`; returns it as `(B,)`.

    Integer ids (`integer=True`) are returned as given; numbers are returned
    in float32 and checked for NaN/Inf where known.

    Raises:
        ValueError: naming `name` for a wrong shape, a length other than
            `size` (where both are known), a wrong dtype or NaN/Inf values.
    """
    expected = "integer ids" if integer else "numbers"
    value = ops.convert_to_tensor(check_host_numbers(value, name, expected))
    if len(value.shape) == 2 and value.shape[1] == 1:
        value = ops.reshape(value, (-1,))
    if len(value.shape) != 1:
        raise ValueError(f"`{name}` must have shape (batch,); got shape {tuple(value.shape)}.")
    if value.shape[0] is not None and size is not None and value.shape[0] != size:
        raise ValueError(f"`{name}` has {value.shape[0]} entries but the batch has {size}.")
    dtype = keras.backend.standardize_dtype(value.dtype)
    if integer and not dtype.startswith(("int", "uint")):
        raise ValueError(f"`{name}` must hold integer ids; got dtype {dtype}.")
    if not integer:
        if not dtype.startswith(("float", "bfloat", "int", "uint")):
            raise ValueError(f"`{name}` must hold numbers; got dtype {dtype}.")
        value = ops.cast(value, "float32")
        check_finite(value, name)
    return value
