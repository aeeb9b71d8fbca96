"""Extra references of an in-batch loss: the batch's anchors against the batch and a memory.

An in-batch loss compares every sample of a batch of `B` (the anchors, rows)
with every sample (the references, columns). With references (a cross-batch
memory of `M` past embeddings, `tfmetric.models.CrossBatchMemoryModel`), the
columns are the batch followed by the `M` references: the matrices are
`(B, B + M)` (O(B·M) memory, never `(B + M)²`), anchors come from the batch
only, a sample is never its own positive (the diagonal of the batch block),
and references with `ref_valid` false (memory slots not yet written) are
neither positives nor negatives.
"""

import keras
from keras import ops

from tfmetric._src import inputs


def check(labels, ref_labels, ref_embeddings, ref_valid, dim):
    """Validates references: `(ref_labels, ref_embeddings, ref_valid)`, or `None` without any.

    Raises:
        ValueError: naming the argument for references given in part, wrong
            shapes, lengths or dtypes.
    """
    if ref_embeddings is None:
        if ref_labels is not None or ref_valid is not None:
            raise ValueError(
                "`ref_labels` and `ref_valid` need `ref_embeddings` (the references' embeddings)."
            )
        return None
    if ref_labels is None:
        raise ValueError("`ref_embeddings` needs `ref_labels` (the references' class labels).")
    ref_embeddings = inputs.check_embeddings(ref_embeddings, "ref_embeddings")
    if dim is not None and ref_embeddings.shape[1] is not None and ref_embeddings.shape[1] != dim:
        raise ValueError(
            f"`ref_embeddings` must have the embeddings' dimension {dim}; got "
            f"{ref_embeddings.shape[1]}."
        )
    size = ref_embeddings.shape[0]
    ref_labels = inputs.check_labels(ref_labels, "ref_labels", size, "ref_embeddings")
    if ref_valid is None:
        ref_valid = ops.ones((ops.shape(ref_embeddings)[0],), "bool")
    else:
        ref_valid = ops.convert_to_tensor(ref_valid)
        if keras.backend.standardize_dtype(ref_valid.dtype) != "bool":
            raise ValueError(
                f"`ref_valid` must be a boolean mask; got dtype {ref_valid.dtype}."
            )
        if len(ref_valid.shape) != 1 or (
            size is not None and ref_valid.shape[0] is not None and ref_valid.shape[0] != size
        ):
            raise ValueError(
                f"`ref_valid` must have shape ({size},), one flag per reference; got "
                f"{tuple(ref_valid.shape)}."
            )
    return ref_labels, ref_embeddings, ref_valid


def columns_and_masks(labels, embeddings, references):
    """The columns of the loss' matrices and its `(positive, negative)` masks.

    Args:
        labels: The batch's labels `(B,)`.
        embeddings: The batch's embeddings `(B, D)`.
        references: `None` or the result of `check`.

    Returns:
        `(columns, positive, negative)`: without references `columns` is
        `None` (the matrices are `distance(embeddings)`) and the masks are
        `inputs.label_masks(labels)`; with references `columns` are the batch
        followed by the references `(B + M, D)` and the masks `(B, B + M)`:
        `positive` where the labels agree, the reference is valid and is not
        the anchor itself; `negative` where the labels differ and the
        reference is valid.
    """
    if references is None:
        return (None, *inputs.label_masks(labels))
    ref_labels, ref_embeddings, ref_valid = references
    if keras.backend.standardize_dtype(labels.dtype) != keras.backend.standardize_dtype(
        ref_labels.dtype
    ):
        labels, ref_labels = ops.cast(labels, "int64"), ops.cast(ref_labels, "int64")
    size = ops.shape(labels)[0]
    column_labels = ops.concatenate([labels, ref_labels], axis=0)
    columns = ops.concatenate([embeddings, ref_embeddings], axis=0)
    valid = ops.concatenate([ops.ones((size,), "bool"), ref_valid], axis=0)
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(column_labels, 0))
    not_self = ops.not_equal(
        ops.expand_dims(ops.arange(size, dtype="int32"), 1),
        ops.expand_dims(ops.arange(ops.shape(column_labels)[0], dtype="int32"), 0),
    )
    valid = ops.expand_dims(valid, 0)
    positive = ops.logical_and(ops.logical_and(same, not_self), valid)
    negative = ops.logical_and(ops.logical_not(same), valid)
    return columns, positive, negative


def prepare(labels, embeddings, ref_labels, ref_embeddings, ref_valid):
    """`columns_and_masks` of validated references (see `check`)."""
    references = check(labels, ref_labels, ref_embeddings, ref_valid, embeddings.shape[1])
    return columns_and_masks(labels, embeddings, references)
