"""Validation of embeddings and labels for metrics and indexes (numpy side)."""

import numpy as np


def check_embeddings(x, name, allow_empty=False):
    """Returns `x` as a finite float32 numpy array of shape `(n, d)`.

    Raises:
        ValueError: naming `name` for a wrong rank, no rows, or NaN/Inf values.
        TypeError: naming `name` for non-numeric values.
    """
    x = np.asarray(x)
    if x.dtype == bool or not (
        np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
    ):
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


def check_labels(labels, size, name, embeddings_name):
    """Returns integer labels of shape `(size,)` as int64 (accepts `(size, 1)`)."""
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"`{name}` must hold integer class labels; got dtype {labels.dtype}. "
            "Cast them to int (e.g. `labels.astype('int64')`)."
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"`{name}` must have shape (n,) or (n, 1); got {labels.shape}.")
    if labels.shape[0] != size:
        raise ValueError(
            f"`{name}` has {labels.shape[0]} labels but `{embeddings_name}` has {size} "
            "embeddings; they must match."
        )
    return labels.astype(np.int64, copy=False)


def check_same_dim(a, b, name_a, name_b):
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same embedding size; got "
            f"{a.shape[1]} and {b.shape[1]}."
        )


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}.")
    return int(value)
