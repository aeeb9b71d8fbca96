"""Explicit `(anchor, positive, negative)` triplets, random or mined offline."""

import numpy as np
import tensorflow as tf

from tfmetric import distances as distances_lib
from tfmetric.data import _sampling

__all__ = ["triplet_dataset"]

MINING_MODES = (None, "hard", "semi-hard")
_EMBED_BATCH = 256
# Anchors per mining step: bounds the (anchors, candidates) distance matrix to ~4M entries.
_BLOCK_ELEMENTS = 1 << 22


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
    samples of other classes. The negative (and positive) choice is:

    - `mining=None`: uniform at random, drawn in the `tf.data` graph per batch;
    - `mining="hard"`: with the current `embedder`, the farthest positive and
      the closest negative of each anchor among all samples;
    - `mining="semi-hard"` (FaceNet): a random positive and the closest
      negative farther than it, `d(a, n) > d(a, p)`; where there is none, the
      farthest negative (TensorFlow Addons' rule, as in
      `tfmetric.losses.triplet_loss`).

    Offline mining (Hermans et al. call it the expensive alternative to
    in-batch mining, `tfmetric.losses.TripletLoss`) recomputes the embeddings
    of every sample and mines the triplets of the next `refresh_every` batches
    at once, between chunks: this refresh is a Python function (a
    `tf.py_function` running the embedder eagerly on the current weights),
    while drawing anchors, gathering, decoding and augmenting stay in the
    graph. Because of prefetching a refresh may use weights a few steps old.
    A refresh embeds the candidate samples (all N, or a random pool of
    `pool_size`) and compares the next `refresh_every * batch_size` anchors
    with all of them: O(batch_size * N) distances per step with the whole
    data. For more than a few thousand samples, mine in a random pool (as
    FaceNet does, "on a subset of the data"; anchors, positives and negatives
    then all come from the pool, redrawn at each refresh), or mine inside P×K
    batches with `tfmetric.losses.TripletLoss`.

    Args:
        x: Inputs: arrays with labels `y`, a finite `tf.data.Dataset` of
            `(x, y)`, or a `tfmetric.data.Source`.
        y: Integer class labels when `x` holds arrays; otherwise `None`.
        batch_size: Triplets per batch. Defaults to `32`.
        seed: Integer seed; `None` draws one from numpy's global generator.
        embedder: The Keras embedding model used for mining (e.g.
            `triplet_model.embedder`). Required when `mining` is set.
        mining: `None`, `"hard"` or `"semi-hard"`. Defaults to `None`.
        refresh_every: Batches between two offline-mining refreshes.
            Defaults to `100`.
        distance: Name, config or `tfmetric.distances.Distance` used for
            mining. Defaults to `"euclidean"`.
        pool_size: Number of samples drawn at random at each refresh to mine
            in; `None` mines in the whole data. Defaults to `None`.
        augment: Optional Keras preprocessing layer/model or function, applied
            to each of the three batches.

    Returns:
        An infinite `tf.data.Dataset` of `((anchor, positive, negative),
        labels)`, `labels` the int64 class labels of shape `(batch_size, 3)`
        (ignored by `tfmetric.losses.TripletMarginLoss`).

    Raises:
        ValueError: fewer than 2 classes, no class with at least 2 samples
            (K < 2: no positive exists), an unknown `mining`, `mining` without
            `embedder`, mismatched `x`/`y`.

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
    batch_size = _sampling.check_positive_int(batch_size, "batch_size")
    refresh_every = _sampling.check_positive_int(refresh_every, "refresh_every")
    if pool_size is not None:
        pool_size = _sampling.check_positive_int(pool_size, "pool_size", 2)
    if index.eligible_np.size == 0:
        raise ValueError(
            "Triplets need classes with at least 2 samples (K >= 2) to form positives; "
            "every class in `y` has a single sample."
        )
    if mining not in MINING_MODES:
        raise ValueError(f"`mining` must be one of {list(MINING_MODES)}; got {mining!r}.")
    if mining is not None and embedder is None:
        raise ValueError(f"`mining={mining!r}` needs the current `embedder` to mine with.")
    if mining is not None and not callable(embedder):
        raise TypeError(f"`embedder` must be a Keras model; got {type(embedder).__name__}.")
    distance = distances_lib.get(distance)
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

        return _sampling.build(draw, emit, source, augment)

    miner = _OfflineMiner(
        index, embedder, distance, mining, seed, batch_size * refresh_every, pool_size
    )

    def mine(chunk):
        table = tf.py_function(miner, [chunk], tf.int64)
        table.set_shape((batch_size * refresh_every, 3))
        return tf.reshape(table, (refresh_every, batch_size, 3))

    return _sampling.build(mine, emit, source, augment)


class _OfflineMiner:
    """Mines a table of `(anchor, positive, negative)` indices with the current embedder."""

    def __init__(self, index, embedder, distance, mining, seed, size, pool_size):
        self.index = index
        self.embedder = embedder
        self.distance = distance
        self.mining = mining
        self.seed = seed
        self.size = size
        self.pool_size = pool_size

    def embed(self, indices):
        parts = []
        for start in range(0, indices.shape[0], _EMBED_BATCH):
            chunk = indices[start : start + _EMBED_BATCH]
            # Fixed batch shapes: one trace of `_embed_batch` for the whole run.
            padded = np.pad(chunk, (0, _EMBED_BATCH - chunk.shape[0]))
            parts.append(self._embed_batch(tf.constant(padded)).numpy()[: chunk.shape[0]])
        return np.concatenate(parts, axis=0)

    @tf.function(reduce_retracing=True)
    def _embed_batch(self, indices):
        embeddings = self.embedder(self.index.source.gather(indices), training=False)
        return tf.cast(embeddings, tf.float32)

    def _pool(self, rng):
        """Candidate samples and the pool positions that can be anchors (class has >= 2)."""
        index = self.index
        if self.pool_size is not None and self.pool_size < index.num_samples:
            pool = np.sort(rng.choice(index.num_samples, self.pool_size, replace=False))
            classes = index.class_of_np[pool]
            counts = np.bincount(classes, minlength=index.num_classes)
            eligible = np.flatnonzero(counts[classes] >= 2)
            if eligible.size:
                return pool, eligible
        pool = np.arange(index.num_samples)
        return pool, np.flatnonzero(index.counts_np[index.class_of_np] >= 2)

    def __call__(self, chunk):
        rng = np.random.default_rng([self.seed, int(chunk)])
        pool, eligible = self._pool(rng)
        anchors = rng.choice(eligible, size=self.size)
        uniform = rng.random(self.size).astype(np.float32)
        embeddings = tf.constant(self.embed(pool))
        classes = tf.constant(self.index.class_of_np[pool])
        positives, negatives = [], []
        step = int(min(self.size, max(64, _BLOCK_ELEMENTS // pool.shape[0])))
        for start in range(0, self.size, step):
            block = anchors[start : start + step]
            pad = step - block.shape[0]
            # Fixed block shapes: one trace of `_mine_block` per pool size.
            chosen_p, chosen_n = self._mine_block(
                embeddings,
                classes,
                tf.constant(np.pad(block, (0, pad))),
                tf.constant(np.pad(uniform[start : start + step], (0, pad))),
            )
            positives.append(chosen_p.numpy()[: block.shape[0]])
            negatives.append(chosen_n.numpy()[: block.shape[0]])
        table = np.stack([anchors, np.concatenate(positives), np.concatenate(negatives)], axis=1)
        return pool[table].astype(np.int64)

    @tf.function(reduce_retracing=True)
    def _mine_block(self, embeddings, classes, block, uniform):
        dist = self.distance(tf.gather(embeddings, block), embeddings)
        if self.distance.is_similarity:
            dist = -dist
        same = tf.equal(tf.gather(classes, block)[:, tf.newaxis], classes[tf.newaxis, :])
        candidates = tf.range(tf.shape(classes, out_type=tf.int64)[0], dtype=tf.int64)
        is_self = tf.equal(block[:, tf.newaxis], candidates[tf.newaxis, :])
        positive = tf.logical_and(same, tf.logical_not(is_self))
        negative = tf.logical_not(same)
        inf = tf.constant(np.inf, dist.dtype)
        if self.mining == "hard":
            chosen_p = tf.argmax(tf.where(positive, dist, -inf), axis=1)
            chosen_n = tf.argmin(tf.where(negative, dist, inf), axis=1)
            return chosen_p, chosen_n
        # A random positive: the k-th other member of the anchor's class, k uniform.
        counts = tf.reduce_sum(tf.cast(positive, tf.float32), axis=1)
        k = tf.floor(uniform * counts)
        running = tf.cumsum(tf.cast(positive, tf.float32), axis=1)
        chosen_p = tf.argmax(tf.cast(running > k[:, tf.newaxis], tf.int32), axis=1)
        d_ap = tf.gather(dist, chosen_p, batch_dims=1)[:, tf.newaxis]
        farther = tf.logical_and(negative, dist > d_ap)
        chosen_n = tf.where(
            tf.reduce_any(farther, axis=1),
            tf.argmin(tf.where(farther, dist, inf), axis=1),
            tf.argmax(tf.where(negative, dist, -inf), axis=1),
        )
        return chosen_p, chosen_n
