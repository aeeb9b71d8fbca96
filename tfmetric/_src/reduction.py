"""Reductions of per-sample loss terms, as Keras documents them, across replicas too.

An in-batch loss is a mean over *terms* (triplets, positive pairs, valid
anchors). Its functional core returns two `(B,)` tensors: `values[i]`, the
sum of the terms of sample `i` (its anchor's triplets, pairs, ...), and
`counts[i]`, how many terms that is. With sample weights `w` (1 by default):

- `"none"`: `w * values`, the per-sample losses;
- `"sum"`: `sum(w * values)`, their sum;
- `"sum_over_batch_size"` / `"mean"`: `sum(w * values) / sum(counts)`, the
  sum divided by the number of terms in the batch (Keras divides by the
  number of samples, i.e. one term per sample; a loss that averages over
  valid anchors has `counts` 0/1, as a Keras mask gives);
- `"mean_with_sample_weight"`: `sum(w * values) / sum(w * counts)`.

Without weights, every mean reduction is the documented loss. Under a
`tf.distribute` strategy, a replica holds the rows of its own samples; it
returns its share of the global value (global denominators), so the sum over
replicas, which the gradient all-reduce takes, is the value of one device
running the whole global batch. A replica that mines only its own shard
(`cross_replica=False`) returns its mean divided by the number of replicas,
as Keras' own losses do.
"""

import keras
import numpy as np
from keras import ops

from tfmetric._src import distribute, inputs

MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def valid_terms(values, valid):
    """Terms of a loss averaged over the samples where `valid` holds: `(values, counts)`."""
    return ops.where(valid, values, 0.0), ops.cast(valid, "float32")


def check_finite_terms(values):
    """Raises when known (eager) loss terms overflowed float32.

    Inputs are checked finite before a loss runs, so a non-finite term means
    the embeddings are too large for the loss (a square or an inner product
    beyond float32's range, about 3.4e38). Traced steps cannot raise: there
    the term is Inf (docs/validation.md gives the supported ranges).

    Raises:
        ValueError: naming `embeddings`, for NaN or infinite terms.
    """
    known = inputs.static_value(values)
    if known is not None and not np.all(np.isfinite(known)):
        raise ValueError(
            "The loss overflowed float32 for these `embeddings`: they are too large for it "
            "(squared distances or inner products beyond 3.4e38; see docs/validation.md for "
            "the supported magnitudes). Scale the embeddings down or L2-normalise them."
        )
    return values


def mean_form(values, counts):
    """Per-sample values whose batch mean is the loss `sum(values) / sum(counts)`.

    The form of the functional losses: `np.mean` of the result is the loss,
    Keras' default reduction of it too.

    Raises:
        ValueError: for known (eager) terms that overflowed float32.
    """
    check_finite_terms(values)
    size = ops.cast(ops.shape(values)[0], "float32")
    return values * size / ops.maximum(ops.sum(counts), 1.0)


def sample_weights(sample_weight, size):
    """`sample_weight` (scalar, `(B,)` or `(B, 1)`) as float32 of shape `(B,)`.

    Raises:
        ValueError: naming `sample_weight` for another shape, a length other
            than the batch size (where both are known) or, where values are
            known, NaN/Inf weights.
    """
    weights = ops.convert_to_tensor(sample_weight)
    if not keras.backend.standardize_dtype(weights.dtype).startswith(("float", "bfloat", "int", "uint")):
        raise ValueError(f"`sample_weight` must hold numbers; got dtype {weights.dtype}.")
    weights = ops.cast(weights, "float32")
    if len(weights.shape) == 2 and weights.shape[1] == 1:
        weights = ops.reshape(weights, (-1,))
    if len(weights.shape) > 1:
        raise ValueError(
            "`sample_weight` must be a scalar or have shape (batch,) or (batch, 1); got "
            f"shape {tuple(weights.shape)}."
        )
    if len(weights.shape) == 1 and isinstance(size, int) and weights.shape[0] not in (None, 1, size):
        raise ValueError(
            f"`sample_weight` has {weights.shape[0]} weights but the batch has {size} samples; "
            "pass one weight per sample (or a scalar)."
        )
    values = inputs.static_value(weights)
    if values is not None and not np.all(np.isfinite(values)):
        raise ValueError("`sample_weight` contains NaN or infinite values.")
    return ops.broadcast_to(weights, (size,))


def reduce_terms(values, counts, reduction, sample_weight=None, context=None, all_counts=None):
    """Reduces per-sample `(values, counts)` as the module docstring says.

    Args:
        values: Per-sample sums of terms, float32 `(B,)`.
        counts: Per-sample numbers of terms, float32 `(B,)`.
        reduction: A Keras reduction name (or `None`).
        sample_weight: Optional weights (scalar, `(B,)` or `(B, 1)`).
        context: The replica context when `values` are this replica's rows of
            a global batch, else `None`.
        all_counts: With `context`, the counts of every row of the global batch.

    Raises:
        ValueError: for known (eager) terms that overflowed float32.
    """
    check_finite_terms(values)
    if sample_weight is not None:
        weights = sample_weights(sample_weight, ops.shape(values)[0])
        values = values * weights
    if reduction is None or reduction == "none":
        return values
    total = ops.sum(values)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        denominator = ops.sum(counts * weights)
        if context is not None:
            denominator = distribute.sum_over_replicas(context, denominator)
    else:
        denominator = ops.sum(all_counts if context is not None else counts)
    mean = ops.divide_no_nan(total, ops.stop_gradient(denominator))
    # A replica mining only its own shard returns its share of the mean over shards.
    return mean if context is not None else distribute.replica_share(mean)
