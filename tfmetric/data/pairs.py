"""Labelled pairs `((x1, x2), same)` for `tfmetric.models.SiameseModel`."""

import tensorflow as tf

from tfmetric._src import validation
from tfmetric.data import _sampling, offline_mining

__all__ = ["pair_dataset"]


def pair_dataset(
    x,
    y=None,
    batch_size=32,
    positive_fraction=0.5,
    seed=None,
    augment=None,
    embedder=None,
    mining=None,
    refresh_every=100,
    distance="euclidean",
    pool_size=None,
):
    """Infinite batches of pairs labelled **1 = same class (similar), 0 = different**.

    Every batch holds exactly `round(positive_fraction * batch_size)` similar
    pairs, in random positions. Without `mining`, a similar pair is a sample
    of a class with at least 2 samples and another sample of the same class; a
    dissimilar pair is a uniformly drawn sample and a uniformly drawn sample
    of another class. Draws happen in `tf.data` graph functions seeded with
    `(seed, group number)` (a few batches are drawn at once): the same seed
    gives the same batches.

    With `mining` (`"easy"`, `"semi-hard"`, `"hard"` or a
    `tfmetric.callbacks.MiningSchedule`), pairs come from offline-mined
    triplets, exactly as in `tfmetric.data.triplet_dataset` (same arguments
    `embedder`, `refresh_every`, `distance`, `pool_size`; in the `tf.data`
    graph, with the embedder's current weights): a similar pair is an
    anchor and its mined positive, a dissimilar pair another anchor and its
    mined negative. "hard" gives the farthest positives and the closest
    negatives, "easy" the closest positives and the farthest negatives,
    "semi-hard" random positives and the closest negatives farther than them.

    Args:
        x: Inputs: arrays with labels `y`, a finite `tf.data.Dataset` of
            `(x, y)`, or a `tfmetric.data.Source` (see
            `tfmetric.data.class_balanced_dataset`).
        y: Integer class labels when `x` holds arrays; otherwise `None`.
        batch_size: Pairs per batch. Defaults to `32`.
        positive_fraction: Fraction of similar pairs, in `[0, 1]`. Defaults to
            `0.5`.
        seed: Integer seed; `None` draws one from numpy's global generator.
        augment: Optional Keras preprocessing layer/model or function, applied
            to the `x1` batch and to the `x2` batch.
        embedder: The Keras embedding model used for mining (e.g.
            `siamese_model.embedder`). Required when `mining` is set.
        mining: `None` (random pairs), `"easy"`, `"semi-hard"`, `"hard"` or a
            `tfmetric.callbacks.MiningSchedule`. Defaults to `None`.
        refresh_every: Batches between two offline-mining refreshes.
            Defaults to `100`.
        distance: Name, config or `tfmetric.distances.Distance` used for
            mining. Defaults to `"euclidean"`.
        pool_size: Samples drawn at random at each refresh to mine in; `None`
            mines in the whole data. Defaults to `None`.

    Returns:
        An infinite `tf.data.Dataset` of `((x1, x2), same)`, `same` float32 of
        shape `(batch_size,)`, ready for `SiameseModel.fit` with
        `tfmetric.losses.PairContrastiveLoss` or binary cross-entropy.

    Raises:
        ValueError: fewer than 2 classes, no class with 2 samples while similar
            pairs are requested, a bad `positive_fraction` or `batch_size`,
            mismatched `x`/`y`; when mining: see
            `tfmetric.data.triplet_dataset`.

    Example:

    >>> x = np.arange(8, dtype="float32").reshape(8, 1)
    >>> y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    >>> (x1, x2), same = next(iter(tfmetric.data.pair_dataset(x, y, batch_size=4, seed=0)))
    >>> float(same.numpy().sum())
    2.0
    """
    index = _sampling.ClassIndex(x, y)
    batch_size = validation.check_int(batch_size, "batch_size")
    positive_fraction = validation.check_number(positive_fraction, "positive_fraction")
    if positive_fraction > 1.0:
        raise ValueError(f"`positive_fraction` must be in [0, 1]; got {positive_fraction!r}.")
    offline_mining.check_arguments(refresh_every, pool_size, distance)
    positives = int(round(positive_fraction * batch_size))
    if positives and index.eligible_np.size == 0:
        raise ValueError(
            "`y` has no class with 2 samples, so no similar pair can be formed; "
            "set `positive_fraction=0` or add samples."
        )
    negatives = batch_size - positives
    if mining is not None:
        pool_size, refresh_every = offline_mining.check_mining(
            mining, embedder, index, pool_size, refresh_every
        )
    seed = _sampling.resolve_seed(seed)
    augment = _sampling.check_augment(augment)
    source = index.source

    def draw(step):
        seeds = _sampling.step_seeds(seed, step, 5)
        group = _sampling.GROUP
        pos_anchor = index.random_anchors(seeds[0], (group, positives), eligible_only=True)
        pos_partner = index.positive_partner(seeds[1], pos_anchor)
        neg_anchor = index.random_anchors(seeds[2], (group, negatives), eligible_only=False)
        neg_partner = index.negative_partner(seeds[3], neg_anchor)
        shuffle = tf.argsort(tf.random.stateless_uniform((group, batch_size), seeds[4]))
        first = tf.gather(tf.concat([pos_anchor, neg_anchor], 1), shuffle, batch_dims=1)
        second = tf.gather(tf.concat([pos_partner, neg_partner], 1), shuffle, batch_dims=1)
        same = tf.concat([tf.ones((group, positives)), tf.zeros((group, negatives))], 1)
        # A dict: tf.data passes it to the next function as one argument.
        return {"first": first, "second": second, "same": tf.gather(same, shuffle, batch_dims=1)}

    def emit(indices, augment_fn):
        x1 = augment_fn(source.gather(indices["first"]))
        x2 = augment_fn(source.gather(indices["second"]))
        return (x1, x2), indices["same"]

    if mining is None:
        return _sampling.build(draw, emit, augment)

    miner = offline_mining.OfflineMiner(
        index, embedder, distance, mining, seed, batch_size * refresh_every, pool_size
    )

    def mine(chunk):
        table = tf.reshape(miner.table(chunk), (refresh_every, batch_size, 3))
        # The first `positives` triplets of a batch give (anchor, positive), the others
        # (anchor, negative); then the pairs are shuffled within the batch.
        is_positive = tf.range(batch_size) < positives
        second = tf.where(is_positive, table[..., 1], table[..., 2])
        same = tf.broadcast_to(tf.cast(is_positive, tf.float32), (refresh_every, batch_size))
        keys = tf.random.stateless_uniform(
            (refresh_every, batch_size), _sampling.step_seeds(seed, -1 - chunk, 1)[0]
        )
        shuffle = tf.argsort(keys)
        return {
            "first": tf.gather(table[..., 0], shuffle, batch_dims=1),
            "second": tf.gather(second, shuffle, batch_dims=1),
            "same": tf.gather(same, shuffle, batch_dims=1),
        }

    mode = miner.mode_code if miner.scheduled else None
    return _sampling.build(mine, emit, augment, prefetch_draws=True, mode=mode)
