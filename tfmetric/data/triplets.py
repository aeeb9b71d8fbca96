"""Explicit `(anchor, positive, negative)` triplets, random or mined offline."""

import atexit
import threading
import time

import numpy as np
import tensorflow as tf

from tfmetric import distances as distances_lib
from tfmetric.data import _sampling

__all__ = ["triplet_dataset"]

MINING_MODES = (None, "hard", "semi-hard")
# Samples per embedder call when mining: at most this many, and at most _EMBED_BYTES of
# in-memory inputs (decoded sources such as image files: _DECODED_EMBED_BATCH).
_EMBED_BATCH = 1024
_EMBED_BYTES = 64 << 20
_DECODED_EMBED_BATCH = 128
# Anchors per mining step: bounds the (anchors, candidates) distance matrix to ~4M entries.
_BLOCK_ELEMENTS = 1 << 22

# A Python function still running inside tf.data when the interpreter shuts down
# hangs the process (TensorFlow cannot finish the call). At exit, refreshes stop
# mining and return at once, and the pipelines get a moment to fill their buffers
# with those cheap tables, after which tf.data calls no more Python.
_closing = threading.Event()
_in_flight = [0]
_in_flight_lock = threading.Lock()
_EXIT_SETTLE_SECONDS = 0.2
_EXIT_WAIT_SECONDS = 10.0


def _stop_refreshes():
    _closing.set()
    deadline = time.monotonic() + _EXIT_WAIT_SECONDS
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        with _in_flight_lock:
            busy = _in_flight[0] > 0
        now = time.monotonic()
        if busy:
            quiet_since = now
        elif now - quiet_since >= _EXIT_SETTLE_SECONDS:
            return
        time.sleep(0.01)


atexit.register(_stop_refreshes)


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
      the closest negative of each anchor among the candidates (below);
    - `mining="semi-hard"` (FaceNet): a random positive and the closest
      negative farther than it, `d(a, n) > d(a, p)`; where there is none, the
      farthest negative (TensorFlow Addons' rule, as in
      `tfmetric.losses.triplet_loss`).

    Ties go to the candidate with the lowest sample index.

    Offline mining (Hermans et al. call it the expensive alternative to
    in-batch mining, `tfmetric.losses.TripletLoss`) works in chunks of
    `refresh_every` batches. Before a chunk, a refresh embeds the candidate
    samples (all N, or a random pool of `pool_size`, redrawn at each refresh)
    with the current weights and mines one triplet for each of
    `min(batch_size * refresh_every, eligible candidates)` distinct anchors
    drawn among the candidates; positives and negatives are candidates too.
    When the chunk holds more triplets than there are distinct anchors (a
    small pool), it goes through the mined triplets again in a new random
    order. The refresh is a Python function (a `tf.py_function` running the
    embedder on the current weights, then XLA-compiled blocks of distances);
    drawing, gathering, decoding and augmenting stay in the graph. The next
    chunk is mined while the current one is consumed, so its triplets come
    from weights up to `refresh_every` (plus prefetching) steps old.

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
        mining: `None`, `"hard"` or `"semi-hard"`. Defaults to `None`.
        refresh_every: Batches between two offline-mining refreshes.
            Defaults to `100`.
        distance: Name, config or `tfmetric.distances.Distance` used for
            mining. Defaults to `"euclidean"`.
        pool_size: Number of samples drawn at random at each refresh to mine
            in (anchors, positives and negatives); `None` mines in the whole
            data. Defaults to `None`.
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

        return _sampling.build(draw, emit, augment)

    miner = _OfflineMiner(index, embedder, distance, mining, seed, batch_size, refresh_every, pool_size)

    def mine(chunk):
        table = tf.py_function(miner, [chunk], tf.int64)
        table.set_shape((batch_size * refresh_every, 3))
        return tf.reshape(table, (refresh_every, batch_size, 3))

    return _sampling.build(mine, emit, augment, prefetch_draws=True)


class _OfflineMiner:
    """Mines a table of `(anchor, positive, negative)` sample indices with the current embedder.

    Called once per chunk of `refresh_every` batches (see `triplet_dataset`).
    Distances are computed by XLA-compiled blocks of anchor rows against all
    candidates, so no tensor is larger than about `_BLOCK_ELEMENTS`.
    """

    def __init__(self, index, embedder, distance, mining, seed, batch_size, refresh_every, pool_size):
        self.index = index
        self.embedder = embedder
        self.distance = distance
        self.mining = mining
        self.seed = seed
        self.size = batch_size * refresh_every
        self.pool_size = pool_size
        candidates = index.num_samples if pool_size is None else min(pool_size, index.num_samples)
        # Rows of anchors per mining call: bounds the (rows, candidates) distances to ~4M entries.
        self.block = int(max(64, min(_BLOCK_ELEMENTS // candidates, self.size, candidates)))
        self.embed_batch = _embed_batch_size(index.source, candidates)
        # Most members one class can have among the candidates (the hard-positive search width).
        self.max_members = int(min(index.max_count, candidates))
        # One call per refresh: embedding and mining run as a single graph.
        self._mine_pool = tf.function(self._mine_pool_graph, reduce_retracing=True)
        self._mine_block = tf.function(self._mine_block_graph, jit_compile=True)

    def _mine_pool_graph(self, pool, grouping, rows, positives):
        """Embeds the pool, then mines `rows` (a multiple of `self.block` anchor positions).

        `grouping` is `(order, offsets, counts)`: the pool positions grouped by
        class, in sample order within a class (see `_refresh`).
        """
        size = self.embed_batch
        count = tf.shape(pool)[0]
        chunks = (count + size - 1) // size
        padded = tf.pad(pool, [[0, chunks * size - count]])
        parts = tf.TensorArray(tf.float32, size=chunks)
        for i in tf.range(chunks):
            # Fixed batch shapes: one trace of the embedder.
            batch = self.index.source.gather(padded[i * size : (i + 1) * size])
            parts = parts.write(i, tf.cast(self.embedder(batch, training=False), tf.float32))
        embeddings = parts.concat()[:count]
        classes = tf.gather(self.index.class_of, pool)
        blocks = tf.shape(rows)[0] // self.block
        chosen_p = tf.TensorArray(tf.int64, size=blocks)
        chosen_n = tf.TensorArray(tf.int64, size=blocks)
        for j in tf.range(blocks):
            window = slice(j * self.block, (j + 1) * self.block)
            p, n = self._mine_block(
                embeddings, classes, grouping, rows[window], positives[window]
            )
            chosen_p = chosen_p.write(j, p)
            chosen_n = chosen_n.write(j, n)
        return chosen_p.concat(), chosen_n.concat()

    def _pool(self, rng):
        index = self.index
        if self.pool_size is None or self.pool_size >= index.num_samples:
            return np.arange(index.num_samples)
        pool = np.sort(rng.choice(index.num_samples, self.pool_size, replace=False))
        counts = np.bincount(index.class_of_np[pool], minlength=index.num_classes)
        if np.any(counts >= 2) and np.count_nonzero(counts) >= 2:
            return pool
        # No positive or no negative in the pool: mine in all samples this time.
        return np.arange(index.num_samples)

    def __call__(self, chunk):
        with _in_flight_lock:
            _in_flight[0] += 1
        try:
            if _closing.is_set():
                return np.zeros((self.size, 3), np.int64)
            return self._refresh(chunk)
        finally:
            with _in_flight_lock:
                _in_flight[0] -= 1

    def _refresh(self, chunk):
        rng = np.random.default_rng([self.seed, int(chunk)])
        pool = self._pool(rng)
        classes = self.index.class_of_np[pool]
        # The pool grouped by class: members of class c are order[offsets[c]:offsets[c] + counts[c]].
        order = np.argsort(classes, kind="stable")
        counts = np.bincount(classes, minlength=self.index.num_classes)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty_like(order)
        rank[order] = np.arange(order.shape[0]) - offsets[classes[order]]
        eligible = np.flatnonzero(counts[classes] >= 2)
        # This refresh's anchors: distinct pool members, as many as the chunk needs.
        rows = rng.permutation(eligible)[: self.size]
        if self.mining == "hard":
            positives = np.zeros_like(rows)
        else:
            # A random other member of the anchor's class; the negative is mined for it.
            count = counts[classes[rows]]
            shift = 1 + np.floor(rng.random(rows.shape[0]) * (count - 1)).astype(np.int64)
            positives = order[offsets[classes[rows]] + (rank[rows] + shift) % count]
        pad = -rows.shape[0] % self.block
        chosen_p, chosen_n = self._mine_pool(
            tf.constant(pool, tf.int64),
            tuple(tf.constant(a, tf.int64) for a in (order, offsets, counts)),
            tf.constant(np.pad(rows, (0, pad)), tf.int64),
            tf.constant(np.pad(positives, (0, pad)), tf.int64),
        )
        negatives = chosen_n.numpy()[: rows.shape[0]]
        if self.mining == "hard":
            positives = chosen_p.numpy()[: rows.shape[0]]
        triplets = np.stack([rows, positives, negatives], axis=1)
        # Fewer distinct anchors than the chunk's triplets: go through them again, reshuffled.
        rounds = -(-self.size // rows.shape[0])
        cycle = np.concatenate([rng.permutation(rows.shape[0]) for _ in range(rounds)])
        return pool[triplets[cycle[: self.size]]].astype(np.int64)

    def _mine_block_graph(self, embeddings, classes, grouping, rows, positives):
        """The mined positive and negative of each row (pool positions).

        Hard: the farthest other member of the row's class and the closest
        member of another class. Semi-hard: `positives` as given and the
        closest negative farther than it, else the farthest negative. Ties go
        to the lowest pool position (the lowest sample index). Values are found
        by plain min/max reductions and positions by a second pass of equality
        (cheaper on CPU than arg-reductions over the whole row).
        """
        dist = self.distance(tf.gather(embeddings, rows), embeddings)
        if self.distance.is_similarity:
            dist = -dist
        inf = tf.constant(np.inf, dist.dtype)
        row_class = tf.gather(classes, rows)
        same = tf.equal(row_class[:, tf.newaxis], classes[tf.newaxis, :])
        if self.mining == "hard":
            order, offsets, counts = grouping
            # The row's class members, in sample order: `max_members` slots, the unused masked.
            slots = tf.range(self.max_members, dtype=tf.int64)[tf.newaxis, :]
            count = tf.gather(counts, row_class)[:, tf.newaxis]
            start = tf.gather(offsets, row_class)[:, tf.newaxis]
            members = tf.gather(order, start + tf.minimum(slots, count - 1))
            valid = tf.logical_and(slots < count, tf.not_equal(members, rows[:, tf.newaxis]))
            to_members = tf.gather(dist, members, batch_dims=1)
            pick = tf.argmax(tf.where(valid, to_members, -inf), axis=1)
            chosen_p = tf.gather(members, pick, batch_dims=1)
            target = tf.reduce_min(tf.where(same, inf, dist), axis=1, keepdims=True)
        else:
            chosen_p = positives
            d_ap = tf.gather(dist, positives, batch_dims=1)[:, tf.newaxis]
            farther = tf.logical_and(tf.logical_not(same), dist > d_ap)
            nearest_farther = tf.reduce_min(tf.where(farther, dist, inf), axis=1, keepdims=True)
            farthest = tf.reduce_max(tf.where(same, -inf, dist), axis=1, keepdims=True)
            target = tf.where(nearest_farther < inf, nearest_farther, farthest)
        # Positions as floats: exact below 2**24 (float32) or 2**53 (float64).
        position_dtype = tf.float32 if self.index.num_samples < (1 << 24) else tf.float64
        positions = tf.range(tf.shape(dist)[1], dtype=position_dtype)[tf.newaxis, :]
        hit = tf.logical_and(tf.logical_not(same), tf.equal(dist, target))
        chosen_n = tf.reduce_min(tf.where(hit, positions, np.inf), axis=1)
        return chosen_p, tf.cast(chosen_n, tf.int64)


def _embed_batch_size(source, candidates):
    """Samples per embedder call: fixed for the whole run (one trace of the embedder)."""
    if source.decode is not None:
        return int(min(candidates, _DECODED_EMBED_BATCH))
    sample_bytes = sum(
        int(np.prod(a.shape[1:])) * a.dtype.size for a in tf.nest.flatten(source.x)
    )
    return int(max(1, min(candidates, _EMBED_BATCH, _EMBED_BYTES // max(sample_bytes, 1))))
