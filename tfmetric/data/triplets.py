"""Explicit `(anchor, positive, negative)` triplets, random or mined offline."""

import tensorflow as tf

from tfmetric._src import validation
from tfmetric.data import _sampling, offline_mining

__all__ = ["triplet_dataset"]


def triplet_dataset(
    x,
    y=None,
    batch_size=32,
    seed=None,
    embedder=None,
    mining=None,
    refresh_every=100,
    distance="euclidean",
    pool_size=None,
    augment=None,
):
    """Infinite batches of `(anchor, positive, negative)` triplets for `TripletModel`.

    Anchors are drawn uniformly among the samples of classes with at least 2
    samples; positives are other samples of the anchor's class; negatives
    samples of other classes. The positive and negative choice is:

    - `mining=None`: uniform at random, drawn in the `tf.data` graph per batch;
    - `mining="hard"`: with the current `embedder`, the farthest positive and
      the closest negative of each anchor among the candidates (below);
    - `mining="semi-hard"` (FaceNet): a random positive and the closest
      negative farther than it, `d(a, n) > d(a, p)`; where there is none, the
      farthest negative (TensorFlow Addons' rule, as in
      `tfmetric.losses.triplet_loss`);
    - `mining="easy"`: the closest positive and the farthest negative (the
      start of an easy-to-hard curriculum);
    - `mining=schedule`, a `tfmetric.callbacks.MiningSchedule` with a
      `mining` schedule of those modes: the mode the schedule sets at each
      epoch (pass the same schedule to `fit(callbacks=[...])`). The mode is a
      variable read by the pipeline: changing it retraces nothing.

    Ties go to the candidate with the lowest sample index.

    Offline mining (Hermans et al. call it the expensive alternative to
    in-batch mining, `tfmetric.losses.TripletLoss`) works in chunks of
    `refresh_every` batches and runs entirely in the `tf.data` graph, without
    Python: a refresh embeds the candidate samples (all N, or a random pool of
    `pool_size`, redrawn at each refresh) with the embedder's current weights
    and mines, with XLA-compiled blocks of distances, one triplet for each of
    `min(batch_size * refresh_every, pool size)` distinct anchors drawn among
    the candidates; positives and negatives are candidates too. When the
    chunk holds more triplets than there are distinct anchors (a small pool),
    it goes through the mined triplets again in a new random order. The next
    chunk is mined while the current one is consumed, so its triplets come
    from weights up to `refresh_every` (plus prefetching) steps old. A random
    pool without a positive pair or a second class gives random triplets for
    that chunk. When a `MiningSchedule` changes the mode, the chunk being
    consumed is mined again with the new mode: the change applies from the
    next batch the pipeline produces (batches already prefetched keep the
    previous mode), not from the next chunk.

    Cost per refresh: embedding the candidates, plus one row of distances to
    all candidates per distinct anchor, i.e. about `batch_size * candidates`
    distances per batch. Mining in all of a large data set is therefore
    expensive (see `benchmarks/data.py`); mine in a random pool (as FaceNet
    does, "on a subset of the data") or inside P×K batches with
    `tfmetric.losses.TripletLoss`.

    Args:
        x: Inputs: arrays with labels `y`, a finite `tf.data.Dataset` of
            `(x, y)`, or a `tfmetric.data.Source`.
        y: Integer class labels when `x` holds arrays; otherwise `None`.
        batch_size: Triplets per batch. Defaults to `32`.
        seed: Integer seed; `None` draws one from numpy's global generator.
        embedder: The Keras embedding model used for mining (e.g.
            `triplet_model.embedder`). Required when `mining` is set.
        mining: `None`, `"easy"`, `"semi-hard"`, `"hard"` or a
            `tfmetric.callbacks.MiningSchedule`. Defaults to `None`.
        refresh_every: Batches between two offline-mining refreshes (an
            integer >= 1). Defaults to `100`.
        distance: Name, config or `tfmetric.distances.Distance` used for
            mining. Defaults to `"euclidean"`.
        pool_size: Number of samples (2 to N) drawn at random at each refresh
            to mine in (anchors, positives and negatives); `None` mines in
            the whole data. Defaults to `None`.
        augment: Optional Keras preprocessing layer/model or function, applied
            to each of the three batches.

    Returns:
        An infinite `tf.data.Dataset` of `((anchor, positive, negative),
        labels)`, `labels` the int64 class labels of shape `(batch_size, 3)`
        (ignored by `tfmetric.losses.TripletMarginLoss`).

    Raises:
        ValueError: fewer than 2 classes, no class with at least 2 samples
            (K < 2: no positive exists), mismatched `x`/`y`; when mining: an
            unknown `mining`, no `embedder`, a class with a single sample, a
            `pool_size` larger than the data, `refresh_every <= 0`, a Keras
            backend other than TensorFlow (the embedder runs in `tf.data`).
        TypeError: an `embedder` of several inputs, such as a `SiameseModel`
            or `TripletModel` given instead of its `embedder`.

    When mining, iterating raises `tf.errors.InvalidArgumentError` naming
    `embedder` if it returns NaN or infinite embeddings.

    Example:

    >>> x = np.arange(12, dtype="float32").reshape(6, 2)
    >>> y = np.array([0, 0, 1, 1, 2, 2])
    >>> (a, p, n), labels = next(iter(tfmetric.data.triplet_dataset(x, y, 4, seed=0)))
    >>> bool(np.all(labels[:, 0] == labels[:, 1]) and np.all(labels[:, 0] != labels[:, 2]))
    True

    Reference:
        Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015.
    """
    index = _sampling.ClassIndex(x, y)
    batch_size = validation.check_int(batch_size, "batch_size")
    offline_mining.check_arguments(refresh_every, pool_size, distance)
    if index.eligible_np.size == 0:
        raise ValueError(
            "Triplets need classes with at least 2 samples (K >= 2) to form positives; "
            "every class in `y` has a single sample."
        )
    if mining is not None:
        pool_size, refresh_every = offline_mining.check_mining(
            mining, embedder, index, pool_size, refresh_every
        )
    seed = _sampling.resolve_seed(seed)
    augment = _sampling.check_augment(augment)
    source = index.source

    def emit(triplet_indices, augment_fn):
        batches = tuple(augment_fn(source.gather(triplet_indices[..., i])) for i in range(3))
        return batches, tf.gather(index.labels, triplet_indices)

    if mining is None:

        def draw(step):
            seeds = _sampling.step_seeds(seed, step, 3)
            shape = (_sampling.GROUP, batch_size)
            anchor = index.random_anchors(seeds[0], shape, eligible_only=True)
            positive = index.positive_partner(seeds[1], anchor)
            negative = index.negative_partner(seeds[2], anchor)
            return tf.stack([anchor, positive, negative], axis=-1)

        return _sampling.build(draw, emit, augment)

    miner = offline_mining.OfflineMiner(
        index, embedder, distance, mining, seed, batch_size * refresh_every, pool_size
    )

    def mine(chunk):
        return tf.reshape(miner.table(chunk), (refresh_every, batch_size, 3))

    mode = miner.mode_code if miner.scheduled else None
    return _sampling.build(mine, emit, augment, prefetch_draws=True, mode=mode)
