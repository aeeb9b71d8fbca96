"""In-batch softmax over (query, candidate) pairs: two-tower retrieval and CLIP's InfoNCE."""

import keras
from keras import ops

from tfmetric._src import inputs, numerics, validation
from tfmetric._src.autograph import as_written

__all__ = ["InBatchSoftmaxLoss", "clip_loss", "in_batch_softmax_loss"]


def _check_logits(logits, check_values=True):
    logits = ops.convert_to_tensor(logits)
    if len(logits.shape) != 2:
        raise ValueError(
            "`logits` must be a (queries, candidates) matrix of shape (batch, batch); got shape "
            f"{tuple(logits.shape)}."
        )
    rows, cols = logits.shape
    if rows is not None and cols is not None and rows != cols:
        raise ValueError(
            f"`logits` must be square: the batch has {rows} queries but {cols} candidates; "
            "every query needs its own candidate (matching batch sizes)."
        )
    if rows == 0:
        raise ValueError("`logits` is empty (batch size 0).")
    dtype = keras.backend.standardize_dtype(logits.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(f"`logits` must be floating point; got dtype {dtype}.")
    logits = ops.cast(logits, "float32")
    if check_values:
        inputs.check_finite(logits, "logits")
    return logits


@as_written
def in_batch_softmax_loss(
    logits, candidate_ids=None, candidate_log_probability=None, symmetric=False
):
    """Softmax cross entropy of each query against the candidates of its batch.

    `logits[i, j]` scores query `i` against candidate `j` (temperature
    already applied); the pair `(i, i)` is the positive and the other
    candidates of the batch are the negatives:

        l_i = -log(exp(z_ii) / sum_j exp(z_ij)),  z_ij = logits[i, j] - log Q_j

    - `candidate_log_probability` (`log Q_j`, the log of the probability that
      candidate `j` is sampled into a batch) applies the sampling-bias
      correction of Yi et al. 2019: popular candidates appear more often as
      in-batch negatives, and subtracting `log Q_j` from every logit of column
      `j` makes the loss an estimate of the full softmax.
    - `candidate_ids` removes accidental hits: a candidate `j != i` with the
      same id as candidate `i` (the same item twice in the batch) is not a
      negative of query `i` and leaves its denominator.
    - `symmetric=True` averages with the candidate-to-query direction (each
      candidate classifies its query among the batch's queries, columns of
      `logits`, without the `log Q` correction): the symmetric InfoNCE of
      CLIP, `(l_i + l'_i) / 2`.

    Args:
        logits: `(B, B)` scores of queries (rows) against candidates (columns);
            computed in float32.
        candidate_ids: Optional integer ids `(B,)` of the candidates. Defaults
            to `None` (no removal).
        candidate_log_probability: Optional `(B,)` log sampling probabilities
            of the candidates. Defaults to `None` (no correction).
        symmetric: Average both directions. Defaults to `False`.

    Returns:
        Per-query values of shape `(B,)` whose mean is the loss.

    Example:

    >>> logits = np.array([[2.0, 0.0], [1.0, 3.0]])
    >>> values = tfmetric.losses.in_batch_softmax_loss(logits)
    >>> np.round(np.asarray(values), 4).tolist()
    [0.1269, 0.1269]

    Reference:
        Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus
        Item Recommendations", RecSys 2019; Radford et al., "Learning
        Transferable Visual Models From Natural Language Supervision", ICML
        2021.
    """
    if not isinstance(symmetric, bool):
        raise TypeError(f"`symmetric` must be a bool; got {symmetric!r}.")
    logits = _check_logits(logits)
    size = logits.shape[0]
    ids = log_q = None
    if candidate_ids is not None:
        ids = inputs.check_vector(candidate_ids, "candidate_ids", size, integer=True)
    if candidate_log_probability is not None:
        log_q = inputs.check_vector(candidate_log_probability, "candidate_log_probability", size, False)
    return _softmax_values(logits, ids, log_q, symmetric)


def _softmax_values(logits, ids, log_q, symmetric):
    """`in_batch_softmax_loss` on checked float32 logits (and ids / log-probabilities)."""
    diagonal = ops.eye(ops.shape(logits)[0], dtype="bool")
    allowed = ops.ones_like(logits, dtype="bool")
    if ids is not None:
        same = ops.equal(ops.expand_dims(ids, 1), ops.expand_dims(ids, 0))
        allowed = ops.logical_or(ops.logical_not(same), diagonal)
    rows = logits if log_q is None else logits - ops.expand_dims(log_q, 0)
    values = numerics.masked_logsumexp(rows, allowed, axis=1) - _diagonal(rows, diagonal)
    if symmetric:
        columns = numerics.masked_logsumexp(logits, allowed, axis=0) - _diagonal(logits, diagonal)
        values = (values + columns) / 2.0
    return values


def _diagonal(matrix, diagonal):
    return ops.sum(ops.where(diagonal, matrix, 0.0), axis=1)


@as_written
def clip_loss(query_embeddings, candidate_embeddings, temperature=0.07):
    """Symmetric InfoNCE of CLIP on L2-normalised embedding pairs.

    `logits = cos(q_i, c_j) / temperature`; the loss averages the
    query-to-candidate and candidate-to-query cross entropies, each pair
    `(q_i, c_i)` being the positive (`in_batch_softmax_loss` with
    `symmetric=True`).

    Args:
        query_embeddings: `(B, D)` embeddings of the first modality.
        candidate_embeddings: `(B, D)` embeddings of the second modality.
        temperature: Positive temperature. Defaults to `0.07` (CLIP's
            initial value).

    Returns:
        Per-pair values of shape `(B,)` whose mean is the loss.

    Example:

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> values = tfmetric.losses.clip_loss(q, q, temperature=1.0)
    >>> np.round(np.asarray(values), 4).tolist()
    [0.3133, 0.3133]

    Reference:
        Radford et al., "Learning Transferable Visual Models From Natural
        Language Supervision", ICML 2021; van den Oord, Li and Vinyals,
        "Representation Learning with Contrastive Predictive Coding", 2018.
    """
    temperature = validation.check_positive(temperature, "temperature")
    query = inputs.check_embeddings(query_embeddings, "query_embeddings", allow_empty=False)
    candidate = inputs.check_embeddings(
        candidate_embeddings, "candidate_embeddings", allow_empty=False
    )
    inputs.check_same_dim(query, candidate, "query_embeddings", "candidate_embeddings")
    if query.shape[0] is not None and candidate.shape[0] is not None:
        if query.shape[0] != candidate.shape[0]:
            raise ValueError(
                f"`query_embeddings` has {query.shape[0]} rows but `candidate_embeddings` has "
                f"{candidate.shape[0]}; each query needs its own candidate."
            )
    query, candidate = numerics.l2_normalize(query), numerics.l2_normalize(candidate)
    # Finite by construction (cosines over a temperature >= 1e-30): no second value check.
    logits = numerics.matmul(query, ops.transpose(candidate)) / temperature
    return _softmax_values(logits, None, None, symmetric=True)


@keras.saving.register_keras_serializable(package="tfmetric")
class InBatchSoftmaxLoss(keras.losses.Loss):
    """In-batch softmax on a `(B, B)` logits matrix, as `tfmetric.models.TwoTowerModel` returns.

    `y_true` are integer candidate ids `(B,)` (used to remove accidental hits
    when `remove_accidental_hits=True`; otherwise any integers, e.g. the row
    numbers); `y_pred` are the logits. See
    `tfmetric.losses.in_batch_softmax_loss`. The `log Q` correction is applied
    by the model (`TwoTowerModel(logq_correction=True)`), which receives the
    sampling probabilities as an input.

    Args:
        symmetric: Average the query-to-candidate and candidate-to-query
            directions (CLIP). Defaults to `False`.
        remove_accidental_hits: Drop candidates sharing the positive's id from
            each query's negatives. Defaults to `False`.
        reduction: Keras reduction of the per-query values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"in_batch_softmax_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).

    Example:

    >>> loss = tfmetric.losses.InBatchSoftmaxLoss(symmetric=True)
    >>> round(float(loss(np.arange(2), np.array([[2.0, 0.0], [1.0, 3.0]]))), 4)
    0.1539

    Reference:
        Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus
        Item Recommendations", RecSys 2019; Radford et al., "Learning
        Transferable Visual Models From Natural Language Supervision", ICML
        2021.
    """

    def __init__(
        self,
        symmetric=False,
        remove_accidental_hits=False,
        reduction="sum_over_batch_size",
        name="in_batch_softmax_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for key, value in (("symmetric", symmetric), ("remove_accidental_hits",
                                                       remove_accidental_hits)):
            if not isinstance(value, bool):
                raise TypeError(f"`{key}` must be a bool; got {value!r}.")
        self.symmetric = symmetric
        self.remove_accidental_hits = remove_accidental_hits

    @as_written
    def __call__(self, y_true, y_pred, sample_weight=None):
        # Shapes here; `call` (through `in_batch_softmax_loss`) checks the values once.
        logits = _check_logits(y_pred, check_values=False)
        y_true = inputs.check_host_labels(y_true, "y_true", renumber=True)
        ids = inputs.check_vector(y_true, "y_true", logits.shape[0], integer=True)
        # Ids in [0, B) survive Keras' cast of y_true to float32 exactly.
        return super().__call__(inputs.first_occurrence_ids(ids), y_pred, sample_weight)

    def call(self, y_true, y_pred):
        ids = ops.cast(y_true, "int32") if self.remove_accidental_hits else None
        return in_batch_softmax_loss(y_pred, candidate_ids=ids, symmetric=self.symmetric)

    def get_config(self):
        config = super().get_config()
        config.update(
            dtype=self._dtype_policy.name,
            symmetric=self.symmetric,
            remove_accidental_hits=self.remove_accidental_hits,
        )
        return config
