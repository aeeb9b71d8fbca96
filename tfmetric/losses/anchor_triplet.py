"""One triplet per anchor, with separate positive and negative mining; the PN loss."""

import functools

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import reduction, references, triplet_mining, validation
from tfmetric._src.autograph import as_written
from tfmetric.losses import batch

POSITIVE_MINING = ("hard", "easy")
NEGATIVE_MINING = ("hard", "semi-hard", "easy")


def _check_margin(margin):
    return None if margin is None else validation.check_number(margin, "margin")


def _mine(dist, positive, negative, positive_mining, negative_mining):
    """Column of each anchor's mined positive and negative (masked row passes, O(B²))."""
    const = ops.stop_gradient(dist)
    hardest_positive = triplet_mining.row_argmax(const, positive)
    if positive_mining == "hard":
        chosen_positive = hardest_positive
    else:
        chosen_positive = triplet_mining.row_argmin(const, positive)
    farthest_negative = triplet_mining.row_argmax(const, negative)
    if negative_mining == "easy":
        return chosen_positive, farthest_negative
    if negative_mining == "hard":
        farther = negative
    else:
        # Semi-hard: farther than the anchor's hardest positive (whatever the
        # positive mining), else the farthest negative.
        d_hardest = ops.expand_dims(triplet_mining.take_columns(const, hardest_positive), 1)
        farther = ops.logical_and(negative, ops.greater(const, d_hardest))
    nearest = triplet_mining.row_argmin(const, farther)
    found = ops.any(farther, axis=1)
    return chosen_positive, ops.where(found, nearest, farthest_negative)


def _anchor_terms(
    labels,
    embeddings,
    distance,
    positive_mining,
    negative_mining,
    margin,
    pn,
    ref_labels=None,
    ref_embeddings=None,
    ref_valid=None,
):
    """Per-sample triplet terms and their counts (1 for anchors with a positive and a negative).

    With references (`tfmetric._src.references`), `p` and `n` are mined among
    the batch and the valid references.
    """
    validation.check_choice(positive_mining, "positive_mining", POSITIVE_MINING)
    validation.check_choice(negative_mining, "negative_mining", NEGATIVE_MINING)
    margin = _check_margin(margin)
    distance = distances_lib.get(distance)
    labels, embeddings = batch.prepare_labels_and_embeddings(labels, embeddings)
    columns, positive, negative = references.prepare(
        labels, embeddings, ref_labels, ref_embeddings, ref_valid
    )
    dist = distance.dissimilarity(embeddings, columns)
    p, n = _mine(dist, positive, negative, positive_mining, negative_mining)
    d_ap, d_an = triplet_mining.take_columns(dist, p), triplet_mining.take_columns(dist, n)
    if pn and columns is None:
        size = ops.shape(dist)[0]
        d_pn = ops.take(
            ops.reshape(dist, (-1,)), ops.cast(p, "int32") * size + ops.cast(n, "int32")
        )
        d_an = ops.minimum(d_an, d_pn)
    elif pn:
        # d(p, n) between two columns: the paired distance of the two gathered rows, O(B·D).
        d_pn = distance.to_dissimilarity(
            distance.paired(ops.take(columns, p, axis=0), ops.take(columns, n, axis=0))
        )
        d_an = ops.minimum(d_an, d_pn)
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    gap = ops.where(valid, d_ap - d_an, 0.0)
    values = ops.softplus(gap) if margin is None else ops.relu(gap + margin)
    values = ops.where(valid, values, 0.0)
    # The mean over anchors that have a positive and a negative.
    return values, ops.cast(valid, "float32")


@as_written
def anchor_triplet_loss(
    labels,
    embeddings,
    distance="cosine",
    positive_mining="hard",
    negative_mining="semi-hard",
    margin=None,
):
    """Triplet loss with one mined triplet per anchor (TensorFlow Similarity's `TripletLoss`).

    For every anchor `a`, a positive `p` (same label, `p != a`) and a negative
    `n` (another label) are mined in the batch:

    - `positive_mining="hard"`: the farthest positive; `"easy"`: the closest.
    - `negative_mining="hard"`: the closest negative; `"easy"`: the farthest;
      `"semi-hard"`: the closest negative farther than the anchor's
      *farthest* positive, else the farthest negative.

    The anchor's term is `max(d(a, p) - d(a, n) + margin, 0)`, or
    `log(1 + exp(d(a, p) - d(a, n)))` for `margin=None` (soft margin), and the
    loss is their mean over the anchors that have a positive and a negative
    (others give 0; TensorFlow Similarity averages over all anchors, which is
    the same on batches where every sample has both, such as P×K batches).
    For a similarity, `d = -s`. Memory is O(B²), forward and backward.

    `tfmetric.losses.triplet_loss` differs in mining a triplet per positive
    *pair*; `positive_mining="hard", negative_mining="hard"` is its
    `mining="hard"` (batch-hard), and `margin=None` its `soft_margin=True`.

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"` (as TensorFlow Similarity).
        positive_mining: `"hard"` or `"easy"`. Defaults to `"hard"`.
        negative_mining: `"semi-hard"`, `"hard"` or `"easy"`. Defaults to
            `"semi-hard"`.
        margin: Non-negative margin, or `None` for the soft margin. Defaults
            to `None`.

    Returns:
        Per-anchor values of shape `(B,)` whose mean is the loss.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> values = tfmetric.losses.anchor_triplet_loss(
    ...     labels, embeddings, distance="euclidean", negative_mining="hard", margin=1.0)
    >>> round(float(np.mean(values)), 4)
    1.125

    Reference:
        Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015; Hermans et al., "In Defense of the Triplet
        Loss for Person Re-Identification", 2017.
    """
    return reduction.mean_form(
        *_anchor_terms(
            labels, embeddings, distance, positive_mining, negative_mining, margin, pn=False
        )
    )


@as_written
def pn_loss(
    labels,
    embeddings,
    distance="cosine",
    positive_mining="hard",
    negative_mining="semi-hard",
    margin=1.0,
):
    """PN loss (Ivis): a per-anchor triplet whose negative must be far from both `a` and `p`.

    Mines `p` and `n` for each anchor as `anchor_triplet_loss` does, then uses
    `min(d(a, n), d(p, n))` as the negative distance, so the loss pushes the
    negative away from the anchor and from the positive:
    `max(d(a, p) - min(d(a, n), d(p, n)) + margin, 0)` (soft-plus form for
    `margin=None`), averaged over the anchors that have a positive and a
    negative. Same definition as TensorFlow Similarity's `PNLoss`.

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"`.
        positive_mining: `"hard"` or `"easy"`. Defaults to `"hard"`.
        negative_mining: `"semi-hard"`, `"hard"` or `"easy"`. Defaults to
            `"semi-hard"`.
        margin: Non-negative margin, or `None` for the soft margin (TensorFlow
            Similarity's `soft_margin=True`). Defaults to `1.0`.

    Returns:
        Per-anchor values of shape `(B,)` whose mean is the loss.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> values = tfmetric.losses.pn_loss(
    ...     labels, embeddings, distance="euclidean", negative_mining="hard")
    >>> round(float(np.mean(values)), 4)
    1.75

    Reference:
        Szubert, Cole, Monaco and Drozdov, "Structure-preserving visualisation
        of high dimensional single-cell datasets", Scientific Reports 9, 2019.
    """
    return reduction.mean_form(
        *_anchor_terms(
            labels, embeddings, distance, positive_mining, negative_mining, margin, pn=True
        )
    )


class _AnchorLoss(batch.InBatchLoss):
    def __init__(
        self,
        distance,
        positive_mining,
        negative_mining,
        margin,
        reduction,
        name,
        dtype,
        cross_replica,
    ):
        super().__init__(
            distance=distance,
            name=name,
            reduction=reduction,
            dtype=dtype,
            cross_replica=cross_replica,
        )
        self.positive_mining = validation.check_choice(
            positive_mining, "positive_mining", POSITIVE_MINING
        )
        self.negative_mining = validation.check_choice(
            negative_mining, "negative_mining", NEGATIVE_MINING
        )
        self.margin = _check_margin(margin)

    def _loss_arguments(self):
        return {
            "positive_mining": self.positive_mining,
            "negative_mining": self.negative_mining,
            "margin": self.margin,
        }


@keras.saving.register_keras_serializable(package="tfmetric")
class AnchorTripletLoss(_AnchorLoss):
    """Triplet loss with one mined triplet per anchor; TensorFlow Similarity's `TripletLoss`.

    See `tfmetric.losses.anchor_triplet_loss`.

    Args:
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"`.
        positive_mining: `"hard"` or `"easy"`. Defaults to `"hard"`.
        negative_mining: `"semi-hard"`, `"hard"` or `"easy"`. Defaults to
            `"semi-hard"`.
        margin: Non-negative margin, or `None` for the soft margin. Defaults
            to `None`.
        reduction: Keras reduction of the per-anchor values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"anchor_triplet_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Mine over the global batch under a `tf.distribute`
            strategy. Defaults to `True`.

    Example:

    >>> loss = tfmetric.losses.AnchorTripletLoss(positive_mining="easy", margin=0.5)
    >>> loss.get_config()["negative_mining"]
    'semi-hard'

    Reference:
        Hermans et al., "In Defense of the Triplet Loss for Person
        Re-Identification", 2017.
    """

    fn = anchor_triplet_loss
    terms = functools.partial(_anchor_terms, pn=False)

    def __init__(
        self,
        distance="cosine",
        positive_mining="hard",
        negative_mining="semi-hard",
        margin=None,
        reduction="sum_over_batch_size",
        name="anchor_triplet_loss",
        dtype=None,
        cross_replica=True,
    ):
        super().__init__(
            distance,
            positive_mining,
            negative_mining,
            margin,
            reduction,
            name,
            dtype,
            cross_replica,
        )


@keras.saving.register_keras_serializable(package="tfmetric")
class PNLoss(_AnchorLoss):
    """PN loss (Ivis); TensorFlow Similarity's `PNLoss`.

    See `tfmetric.losses.pn_loss`.

    Args:
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"cosine"`.
        positive_mining: `"hard"` or `"easy"`. Defaults to `"hard"`.
        negative_mining: `"semi-hard"`, `"hard"` or `"easy"`. Defaults to
            `"semi-hard"`.
        margin: Non-negative margin, or `None` for the soft margin. Defaults
            to `1.0`.
        reduction: Keras reduction of the per-anchor values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"pn_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Mine over the global batch under a `tf.distribute`
            strategy. Defaults to `True`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.PNLoss(margin=None))
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> loss = tfmetric.losses.PNLoss(distance="euclidean", negative_mining="hard")
    >>> round(float(loss(labels, embeddings)), 4)
    1.75

    Reference:
        Szubert, Cole, Monaco and Drozdov, "Structure-preserving visualisation
        of high dimensional single-cell datasets", Scientific Reports 9, 2019.
    """

    fn = pn_loss
    terms = functools.partial(_anchor_terms, pn=True)

    def __init__(
        self,
        distance="cosine",
        positive_mining="hard",
        negative_mining="semi-hard",
        margin=1.0,
        reduction="sum_over_batch_size",
        name="pn_loss",
        dtype=None,
        cross_replica=True,
    ):
        super().__init__(
            distance,
            positive_mining,
            negative_mining,
            margin,
            reduction,
            name,
            dtype,
            cross_replica,
        )
