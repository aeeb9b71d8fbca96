"""MoCo's InfoNCE: queries against their keys and a queue of past keys."""

import keras
from keras import ops

from tfmetric._src import inputs, numerics, validation
from tfmetric._src.autograph import as_written

__all__ = ["momentum_contrast_loss"]


@as_written
def momentum_contrast_loss(
    queries, keys, queue, temperature=0.07, ids=None, queue_ids=None, queue_valid=None
):
    """InfoNCE of MoCo: each query classifies its own key among the queued keys.

    With L2-normalised query `q_i`, key `k_i` (the other view of the same
    sample, from the momentum encoder) and queued keys `n_j`:

        l_i = -log(exp(q_i·k_i / t) / (exp(q_i·k_i / t) + sum_j exp(q_i·n_j / t)))

    Queued keys with `queue_valid` false (slots not yet written) or with the
    query's own id (`queue_ids == ids[i]`: an earlier view of the same
    sample, which is not a negative) are left out of the sum.

    Args:
        queries: `(B, D)` query embeddings (normalised here).
        keys: `(B, D)` key embeddings (normalised here); no gradient flows to them.
        queue: `(M, D)` queued key embeddings (normalised here); constants.
        temperature: Positive temperature. Defaults to `0.07`.
        ids: Optional integer sample ids `(B,)` of the queries.
        queue_ids: Optional integer ids `(M,)` of the queued keys (with `ids`).
        queue_valid: Optional boolean `(M,)`: which queue slots hold keys.

    Returns:
        Per-query values `(B,)`.

    Example:

    >>> q = np.array([[1.0, 0.0]])
    >>> queue = np.array([[0.0, 1.0], [-1.0, 0.0]])
    >>> values = tfmetric.losses.momentum_contrast_loss(q, q, queue, temperature=1.0)
    >>> round(float(values[0]), 4)
    0.4076

    Reference:
        He et al., "Momentum Contrast for Unsupervised Visual Representation
        Learning", CVPR 2020.
    """
    temperature = validation.check_positive(temperature, "temperature")
    queries = inputs.check_embeddings(queries, "queries", allow_empty=False)
    keys = inputs.check_embeddings(keys, "keys", allow_empty=False)
    queue = inputs.check_embeddings(queue, "queue")
    if queries.shape[0] is not None and keys.shape[0] is not None:
        if queries.shape[0] != keys.shape[0]:
            raise ValueError(
                f"`queries` has {queries.shape[0]} rows but `keys` has {keys.shape[0]}; each "
                "query needs the key of its other view."
            )
    inputs.check_same_dim(queries, keys, "queries", "keys")
    inputs.check_same_dim(queries, queue, "queries", "queue")
    size = queue.shape[0]
    if ids is not None and queue_ids is not None:
        ids = inputs.check_labels(ids, "ids", queries.shape[0], "queries")
        queue_ids = inputs.check_labels(queue_ids, "queue_ids", size, "queue")
    if queue_valid is not None:
        queue_valid = _check_queue_valid(queue_valid, size)
    queries = numerics.l2_normalize(queries)
    keys = ops.stop_gradient(numerics.l2_normalize(keys))
    queue = ops.stop_gradient(numerics.l2_normalize(queue))
    positive = ops.sum(queries * keys, axis=1, keepdims=True) / temperature
    negative = numerics.matmul(queries, ops.transpose(queue)) / temperature
    allowed = ops.ones_like(negative, dtype="bool")
    if queue_valid is not None:
        allowed = ops.logical_and(allowed, ops.expand_dims(queue_valid, 0))
    if ids is not None and queue_ids is not None:
        same = ops.equal(
            ops.expand_dims(ops.cast(ids, "int64"), 1),
            ops.expand_dims(ops.cast(queue_ids, "int64"), 0),
        )
        allowed = ops.logical_and(allowed, ops.logical_not(same))
    logits = ops.concatenate([positive, ops.where(allowed, negative, -float("inf"))], axis=1)
    shift = ops.stop_gradient(ops.max(logits, axis=1, keepdims=True))
    lse = ops.log(ops.sum(ops.exp(logits - shift), axis=1)) + ops.squeeze(shift, 1)
    return lse - ops.squeeze(positive, 1)


def _check_queue_valid(queue_valid, size):
    """`queue_valid` as a boolean `(M,)` tensor; a `ValueError` naming it otherwise."""
    queue_valid = ops.convert_to_tensor(queue_valid)
    dtype = keras.backend.standardize_dtype(queue_valid.dtype)
    if dtype != "bool":
        raise ValueError(f"`queue_valid` must be a boolean mask; got dtype {dtype}.")
    if len(queue_valid.shape) != 1:
        raise ValueError(
            f"`queue_valid` must have shape (queue size,); got shape {tuple(queue_valid.shape)}."
        )
    length = queue_valid.shape[0]
    if length is not None and size is not None and length != size:
        raise ValueError(
            f"`queue_valid` has {length} entries but `queue` has {size} rows; they must match."
        )
    return queue_valid
