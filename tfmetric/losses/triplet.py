"""Triplet loss with online mining: all, batch-hard, semi-hard and easy triplets."""

import keras
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import inputs, reduction, references, triplet_mining, validation
from tfmetric._src.autograph import as_written
from tfmetric.losses import batch
from tfmetric.losses.scheduled import ScheduledArguments, margin_value

MINING_MODES = ("all", "hard", "semi-hard", "easy")


def _hard_mining(dist, labels, margin, soft_margin, easy=False, masks=None):
    """Hardest positive and hardest negative per anchor (Hermans et al. 2017).

    With `easy=True`, the easiest ones instead: the closest positive and the
    farthest negative. `masks`: the `(positive, negative)` masks of a matrix
    with references (`tfmetric._src.references`), else `None` (in-batch).
    """
    const = ops.stop_gradient(dist)
    if masks is None:
        size = ops.shape(labels)[0]
        _, _, _, count = triplet_mining.label_blocks(labels)
        positive, negative = inputs.label_masks(labels)
        valid = ops.logical_and(ops.greater(count, 1), ops.less(count, size))
    else:
        positive, negative = masks
        valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    if easy:
        hardest_positive = triplet_mining.row_argmin(const, positive)
        hardest_negative = triplet_mining.row_argmax(const, negative)
    else:
        hardest_positive = triplet_mining.row_argmax(const, positive)
        hardest_negative = triplet_mining.row_argmin(const, negative)
    # Gathering the two entries (rather than reducing with max/min) keeps the
    # backward pass to two O(B) scatters.
    gap = triplet_mining.take_columns(dist, hardest_positive) - triplet_mining.take_columns(
        dist, hardest_negative
    )
    gap = ops.where(valid, gap, 0.0)
    per_anchor = ops.softplus(gap) if soft_margin else ops.relu(gap + margin)
    per_anchor = ops.where(valid, per_anchor, 0.0)
    return per_anchor, ops.cast(valid, "float32")


@as_written
def triplet_loss(
    labels,
    embeddings,
    margin=1.0,
    distance="euclidean",
    mining="semi-hard",
    soft_margin=False,
):
    """Triplet loss over the triplets mined in a labelled batch.

    For an anchor `a`, a positive `p` (same label, `p != a`) and a negative `n`
    (another label), the triplet term is `max(d(a, p) - d(a, n) + margin, 0)`,
    or `log(1 + exp(d(a, p) - d(a, n)))` with `soft_margin=True` (the margin is
    then unused). For a similarity such as `"inner_product"`, `d = -s`.

    Mining modes and their normalisation:

    - `"semi-hard"` (FaceNet, TensorFlow Addons' rule): for every positive pair
      `(a, p)` the closest negative farther than `p`, i.e. the smallest
      `d(a, n) > d(a, p)`; where there is none, the farthest negative. The loss
      is the mean over positive pairs (those whose anchor has a negative).
    - `"hard"` (batch-hard, Hermans et al. 2017): for every anchor its farthest
      positive and closest negative; the mean over anchors that have both.
    - `"all"`: every valid triplet `(a, p, n)`; the mean over the triplets with
      a non-zero term (with `soft_margin`, over all valid triplets), as in
      "batch all" of Hermans et al. 2017.
    - `"easy"`: for every anchor its closest positive and farthest negative
      (the start of an easy-to-hard curriculum); the mean over anchors that
      have both.

    A batch without any positive pair or any negative gives 0 with a zero
    gradient. Memory is O(B²) forward and backward; "semi-hard" and "all" run
    a loop of `max #positives per anchor` iterations, each a few O(B²) passes.

    Args:
        labels: Integer class labels, shape `(B,)` or `(B, 1)`.
        embeddings: Embeddings, shape `(B, D)`; computed in float32.
        margin: Non-negative margin. Defaults to `1.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        mining: `"semi-hard"`, `"hard"`, `"all"` or `"easy"`, or a scalar
            integer tensor indexing `tfmetric.losses.triplet.MINING_MODES`
            (chosen at run time, e.g. by a curriculum). Defaults to
            `"semi-hard"`.
        soft_margin: Use the soft-plus form instead of the hinge. Defaults to
            `False`.

    Returns:
        Per-anchor values of shape `(B,)` whose mean is the loss.

    Example:

    >>> import numpy as np
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> values = tfmetric.losses.triplet_loss(labels, embeddings, mining="hard")
    >>> round(float(np.mean(values)), 4)
    1.125

    Reference:
        Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015; Hermans et al., "In Defense of the Triplet
        Loss for Person Re-Identification", 2017.
    """
    return reduction.mean_form(
        *_triplet_terms(
            labels,
            embeddings,
            margin=margin,
            distance=distance,
            mining=mining,
            soft_margin=soft_margin,
        )
    )


def _triplet_terms(
    labels,
    embeddings,
    margin=1.0,
    distance="euclidean",
    mining="semi-hard",
    soft_margin=False,
    ref_labels=None,
    ref_embeddings=None,
    ref_valid=None,
):
    """Per-sample sums of the terms of `triplet_loss` and their counts.

    With references (`tfmetric._src.references`), every anchor of the batch
    mines its triplets among the batch and the valid references.
    """
    margin = margin_value(margin)
    soft_margin = validation.check_bool(soft_margin, "soft_margin")
    if isinstance(mining, str):
        validation.check_choice(mining, "mining", MINING_MODES)
    distance = distances_lib.get(distance)
    labels, embeddings = batch.prepare_labels_and_embeddings(labels, embeddings)
    if keras.backend.standardize_dtype(labels.dtype) not in ("int32", "int64"):
        labels = ops.cast(labels, "int64")  # a bijection: label equality is kept
    columns, positive, negative = references.prepare(
        labels, embeddings, ref_labels, ref_embeddings, ref_valid
    )
    masks = None if columns is None else (positive, negative)
    dist = distance.dissimilarity(embeddings, columns)
    if isinstance(mining, str):
        return _mine(mining, dist, labels, margin, soft_margin, masks)
    code = ops.cast(ops.convert_to_tensor(mining), "int32")
    return _scheduled_mining(code, dist, labels, ops.cast(margin, "float32"), soft_margin, masks)


def _scheduled_mining(code, dist, labels, margin, soft_margin, masks=None):
    """Per-anchor term sums and counts for the mode `MINING_MODES[code]`, chosen at run time.

    Each branch returns its values and their gradient with respect to the
    distances (row `a` of that gradient is the gradient of anchor `a`'s value)
    computed on stopped distances, and the gradient reaches `dist` through
    `values + sum(rows * (dist - stop_gradient(dist)))`: same values and
    gradients, and nothing to differentiate through the conditional (the
    gradient of a TensorFlow conditional around loops does not compile with
    XLA).
    """
    extra = () if masks is None else tuple(masks)

    def masks_of(operands):
        return None if masks is None else tuple(operands)

    if keras.backend.backend() != "tensorflow":
        branches = [
            lambda d, y, m, *rest, mode=mode: _mine(mode, d, y, m, soft_margin, masks_of(rest))
            for mode in MINING_MODES
        ]
        return ops.switch(code, branches, dist, labels, margin, *extra)
    import tensorflow as tf

    const = ops.stop_gradient(dist)

    def branch(mode):
        def run(matrix, y, m, *rest):
            # A tensor of the branch's own graph (operands arrive as outer captures).
            matrix = tf.identity(matrix)
            with tf.GradientTape() as tape:
                tape.watch(matrix)
                values, counts = _mine(mode, matrix, y, m, soft_margin, masks_of(rest))
                total = ops.sum(values)
            rows = tape.gradient(total, matrix, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return values, counts, rows

        return run

    branches = [branch(mode) for mode in MINING_MODES]
    values, counts, rows = ops.switch(code, branches, const, labels, margin, *extra)
    values, rows = ops.stop_gradient(values), ops.stop_gradient(rows)
    return values + ops.sum(rows * (dist - const), axis=1), counts


def _mine(mining, dist, labels, margin, soft_margin, masks=None):
    """Per-anchor sums of the triplet terms of `mining` and their counts."""
    if mining in ("hard", "easy"):
        return _hard_mining(dist, labels, margin, soft_margin, easy=mining == "easy", masks=masks)
    value, pairs, nonzero = triplet_mining.loop_mining(
        dist, labels, margin, soft_margin, semi_hard=mining == "semi-hard", masks=masks
    )
    if mining == "semi-hard":
        return value, pairs
    if soft_margin and masks is not None:
        positive, negative = masks
        return value, ops.sum(ops.cast(positive, "float32"), axis=1) * ops.sum(
            ops.cast(negative, "float32"), axis=1
        )
    if soft_margin:
        _, _, _, count = triplet_mining.label_blocks(labels)
        size = ops.shape(labels)[0]
        return value, ops.cast((count - 1) * (size - count), "float32")
    return value, nonzero


@keras.saving.register_keras_serializable(package="tfmetric")
class TripletLoss(ScheduledArguments, batch.InBatchLoss):
    """Triplet loss with online mining on batches of (integer labels, embeddings).

    See `tfmetric.losses.triplet_loss` for the mining modes and normalisation.

    Args:
        margin: Non-negative margin. Defaults to `1.0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        mining: `"semi-hard"`, `"hard"`, `"all"` or `"easy"`. Defaults to
            `"semi-hard"`.
        soft_margin: Soft-plus instead of the hinge. Defaults to `False`.
        reduction: Keras reduction of the per-anchor values. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"triplet_loss"`.
        dtype: Dtype of the returned loss. Defaults to `None` (float32).
        cross_replica: Under a `tf.distribute` strategy, mine over the global
            batch gathered from all replicas (`False`: each replica mines its
            own samples). Defaults to `True`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.TripletLoss(margin=0.2))
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]])
    >>> round(float(tfmetric.losses.TripletLoss(mining="hard")(labels, embeddings)), 4)
    1.125

    Reference:
        Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015.
    """

    fn = triplet_loss
    terms = _triplet_terms

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        mining="semi-hard",
        soft_margin=False,
        reduction="sum_over_batch_size",
        name="triplet_loss",
        dtype=None,
        cross_replica=True,
    ):
        super().__init__(
            distance=distance,
            name=name,
            reduction=reduction,
            dtype=dtype,
            cross_replica=cross_replica,
        )
        self.margin = validation.check_number(margin, "margin")
        self.mining = validation.check_choice(mining, "mining", MINING_MODES)
        self.soft_margin = validation.check_bool(soft_margin, "soft_margin")

    def _loss_arguments(self):
        return {
            "margin": self.margin,
            "mining": self.mining,
            "soft_margin": self.soft_margin,
        }

    def _call_arguments(self):
        arguments = dict(self._loss_arguments(), margin=self.current_margin())
        if self._mining_variable is not None:
            # The schedule's mode index, mapped to this loss's MINING_MODES.
            table = ops.convert_to_tensor(
                [MINING_MODES.index(m) if m in MINING_MODES else -1 for m in self._mining_modes],
                "int32",
            )
            arguments["mining"] = ops.take(table, ops.convert_to_tensor(self._mining_variable))
        return arguments
