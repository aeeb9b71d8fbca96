"""Offline mining in the `tf.data` graph: embed a pool with the current embedder, mine with XLA.

`OfflineMiner.table(chunk)` is a graph function (no Python at run time) that
returns the `(anchor, positive, negative)` sample indices of one chunk of
batches. It reads the embedder's variables when it runs, so each refresh uses
the current weights, and the mining mode from a variable when a curriculum
(`tfmetric.callbacks.MiningSchedule`) drives it.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from tfmetric import distances as distances_lib
from tfmetric._src import validation
from tfmetric.data import _sampling

__all__ = ["OFFLINE_MINING_MODES", "OfflineMiner", "check_mining"]

OFFLINE_MINING_MODES = ("easy", "semi-hard", "hard")
# Samples per embedder call when mining: at most this many, and at most _EMBED_BYTES of
# in-memory inputs (decoded sources such as image files: _DECODED_EMBED_BATCH).
_EMBED_BATCH = 1024
_EMBED_BYTES = 64 << 20
_DECODED_EMBED_BATCH = 128
# Anchors per mining step: bounds the (anchors, candidates) distance matrix to ~4M entries.
_BLOCK_ELEMENTS = 1 << 22


def _is_schedule(mining):
    """A `tfmetric.callbacks.MiningSchedule` (duck-typed: data does not import callbacks)."""
    return hasattr(mining, "mining_variable") and hasattr(mining, "require_modes")


def check_arguments(refresh_every, pool_size, distance):
    """Checks the mining arguments of a sampler even when `mining` is None (never ignored).

    Raises:
        ValueError: naming `refresh_every` (not an integer >= 1), `pool_size`
            (not None or an integer >= 2) or `distance` (an unknown distance).
    """
    validation.check_int(refresh_every, "refresh_every")
    if pool_size is not None:
        validation.check_int(pool_size, "pool_size", 2)
    distances_lib.get(distance)


def check_mining(mining, embedder, index, pool_size, refresh_every):
    """Validates the offline-mining arguments of a sampler; returns `(pool_size, refresh_every)`.

    Raises:
        ValueError: an unknown mode, a schedule with a mode offline mining
            lacks, no `embedder`, a class with a single sample (it has no
            positive to mine), a `pool_size` outside `[2, number of samples]`,
            a `refresh_every` that is not a positive integer.
        TypeError: an `embedder` that cannot be called.
    """
    if _is_schedule(mining):
        if mining.mining_variable is None:
            raise ValueError(
                "`mining` is a MiningSchedule without a `mining` schedule; give it one "
                f"(modes {list(OFFLINE_MINING_MODES)})."
            )
        mining.require_modes(OFFLINE_MINING_MODES, "offline mining")
    elif mining not in OFFLINE_MINING_MODES:
        raise ValueError(
            f"`mining` must be None, one of {list(OFFLINE_MINING_MODES)} or a "
            f"tfmetric.callbacks.MiningSchedule; got {mining!r}."
        )
    if embedder is None:
        raise ValueError("Offline `mining` needs the current `embedder` to mine with.")
    if not callable(embedder):
        raise TypeError(f"`embedder` must be a Keras model; got {type(embedder).__name__}.")
    _check_single_input(embedder)
    if isinstance(embedder, keras.layers.Layer) and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "Offline `mining` runs `embedder` inside the `tf.data` pipeline, which needs a "
            "TensorFlow Keras model: set KERAS_BACKEND=tensorflow (current backend: "
            f"{keras.backend.backend()}), or mine inside each batch with an in-batch loss "
            "such as `tfmetric.losses.TripletLoss(mining=...)`."
        )
    if isinstance(refresh_every, bool) or not isinstance(refresh_every, numbers.Integral):
        raise ValueError(f"`refresh_every` must be an integer >= 1; got {refresh_every!r}.")
    if refresh_every <= 0:
        raise ValueError(f"`refresh_every` must be an integer >= 1; got {refresh_every!r}.")
    singles = np.flatnonzero(index.counts_np < 2)
    if singles.size:
        labels = np.unique(index.source.labels)[singles][:10].tolist()
        raise ValueError(
            f"Offline mining needs at least 2 samples per class (a positive for every anchor); "
            f"{singles.size} class(es) of `y` have a single sample, e.g. labels {labels}. "
            "Drop them or mine without them."
        )
    if pool_size is not None:
        pool_size = validation.check_int(pool_size, "pool_size", 2)
        if pool_size > index.num_samples:
            raise ValueError(
                f"`pool_size` ({pool_size}) is larger than the data ({index.num_samples} "
                "samples); use `pool_size=None` to mine in all samples."
            )
    return pool_size, int(refresh_every)


def _check_single_input(embedder):
    """Refuses a model of several inputs, such as a twin model passed instead of its tower."""
    try:
        inputs = embedder.inputs if isinstance(embedder, keras.Model) else None
    except (AttributeError, ValueError):
        inputs = None
    if not inputs or len(inputs) == 1:
        return
    tower = getattr(embedder, "embedder", None)
    if isinstance(tower, keras.layers.Layer):
        raise TypeError(
            f"`embedder` is a {type(embedder).__name__} (it takes {len(inputs)} inputs, one per "
            "branch); offline mining embeds single samples with its shared tower: pass "
            "`model.embedder`."
        )
    raise TypeError(
        f"`embedder` must take one input (a batch of samples); {type(embedder).__name__} "
        f"takes {len(inputs)}."
    )


class OfflineMiner:
    """Mines a table of `(anchor, positive, negative)` sample indices in the graph.

    Each call of `table(chunk)`:

    1. draws the pool (all samples, or `pool_size` samples without replacement,
       seeded by `(seed, chunk)`) and embeds it with the current weights, in
       fixed-size batches;
    2. draws `min(size, pool size)` distinct anchors among the pool members
       whose class has another member in the pool (in random order);
    3. mines a positive and a negative for each anchor among the pool members,
       with XLA-compiled blocks of anchor rows against the whole pool (no
       tensor larger than about `_BLOCK_ELEMENTS`):

       - `"hard"`: the farthest positive and the closest negative;
       - `"easy"`: the closest positive and the farthest negative;
       - `"semi-hard"` (FaceNet): a random positive and the closest negative
         farther than it, `d(a, n) > d(a, p)`, else the farthest negative.

       Ties go to the lowest sample index.
    4. lays out `size` triplets, going through the anchors again in a new
       order when there are fewer anchors than triplets.

    A pool without any positive pair or without a second class (possible only
    for small pools) gives random triplets for that refresh.
    """

    def __init__(self, index, embedder, distance, mining, seed, size, pool_size):
        self.index = index
        self.embedder = embedder
        self.distance = distances_lib.get(distance)
        self.mining = mining
        self.seed = seed
        self.size = int(size)
        self.pool = index.num_samples if pool_size is None else int(pool_size)
        self.anchors = min(self.size, self.pool)
        self.block = int(max(64, min(_BLOCK_ELEMENTS // self.pool, self.anchors)))
        self.blocks = -(-self.anchors // self.block)
        self.embed_batch = _embed_batch_size(index.source, self.pool)
        # Most members one class can have in the pool (the positive search width).
        self.max_members = int(min(index.max_count, self.pool))
        self._mine_block = tf.function(self._mine_block_graph, jit_compile=True, autograph=False)

    @property
    def scheduled(self):
        """Whether a curriculum (`MiningSchedule`) sets the mining mode."""
        return _is_schedule(self.mining)

    def mode_code(self):
        """Graph function: the current mode's index in the schedule's `MODES` (int32)."""
        return tf.cast(tf.convert_to_tensor(self.mining.mining_variable), tf.int32)

    def _mode(self):
        """`(sign, semi_hard)` of the current mode: sign -1 for "easy", else 1."""
        if _is_schedule(self.mining):
            names = list(self.mining.MODES)
            signs = tf.constant([-1.0 if m == "easy" else 1.0 for m in names], tf.float32)
            semi = tf.constant([m == "semi-hard" for m in names])
            code = tf.cast(tf.convert_to_tensor(self.mining.mining_variable), tf.int32)
            return tf.gather(signs, code), tf.gather(semi, code)
        return (
            tf.constant(-1.0 if self.mining == "easy" else 1.0),
            tf.constant(self.mining == "semi-hard"),
        )

    def _draw_pool(self, seed):
        """Pool sample indices in increasing order (pool positions follow sample order)."""
        if self.pool == self.index.num_samples:
            return tf.range(self.pool, dtype=tf.int64)
        keys = tf.random.stateless_uniform((self.index.num_samples,), seed)
        chosen = tf.math.top_k(keys, self.pool, sorted=False).indices
        return tf.sort(tf.cast(chosen, tf.int64))

    def _embed(self, pool):
        size = self.embed_batch
        chunks = -(-self.pool // size)
        padded = tf.pad(pool, [[0, chunks * size - self.pool]])
        parts = tf.TensorArray(tf.float32, size=chunks, element_shape=None, infer_shape=False)

        def body(i, parts):
            batch = self.index.source.gather(padded[i * size : (i + 1) * size])
            return i + 1, parts.write(i, tf.cast(self.embedder(batch, training=False), tf.float32))

        _, parts = tf.while_loop(lambda i, _: i < chunks, body, (tf.constant(0), parts))
        embeddings = tf.reshape(parts.concat(), (chunks * size, -1))[: self.pool]
        # NaN distances match no candidate: the mined indices would be out of range.
        return tf.debugging.assert_all_finite(
            embeddings,
            "Offline mining: `embedder` returned NaN or infinite embeddings for the samples to "
            "mine in (diverged weights, or inputs it cannot embed); no triplet can be mined.",
        )

    def table(self, chunk):
        """Graph function: `(size, 3)` int64 sample indices of one chunk's triplets."""
        index = self.index
        pool_seed, anchor_seed, positive_seed, layout_seed, random_seed = _sampling.step_seeds(
            self.seed, chunk, 5
        )
        pool = self._draw_pool(pool_seed)
        classes = tf.gather(index.class_of, pool)
        # The pool grouped by class: members of class c are order[offsets[c]:offsets[c] + counts[c]].
        order = tf.argsort(classes, stable=True)
        counts = tf.math.bincount(
            classes, minlength=index.num_classes, maxlength=index.num_classes, dtype=tf.int64
        )
        offsets = tf.math.cumsum(counts, exclusive=True)
        order = tf.cast(order, tf.int64)
        rank = tf.scatter_nd(
            order[:, tf.newaxis],
            tf.range(self.pool, dtype=tf.int64) - tf.gather(offsets, tf.gather(classes, order)),
            (self.pool,),
        )
        eligible = tf.gather(counts, classes) >= 2
        usable = tf.logical_and(
            tf.reduce_any(eligible), tf.math.count_nonzero(counts) >= 2
        )

        # Distinct anchors, the eligible ones first, in random order.
        keys = tf.random.stateless_uniform((self.pool,), anchor_seed) + 2.0 * tf.cast(
            eligible, tf.float32
        )
        rows = tf.cast(tf.math.top_k(keys, self.anchors).indices, tf.int64)
        distinct = tf.minimum(
            tf.math.count_nonzero(eligible, dtype=tf.int64), tf.constant(self.anchors, tf.int64)
        )
        # A random other member of the anchor's class (the semi-hard positive).
        row_class = tf.gather(classes, rows)
        count = tf.gather(counts, row_class)
        shift = 1 + index.uniform_int(positive_seed, (self.anchors,), tf.maximum(count - 1, 1))
        positions = (tf.gather(rank, rows) + shift) % count
        positives = tf.gather(order, tf.gather(offsets, row_class) + positions)

        embeddings = self._embed(pool)
        sign, semi = self._mode()
        pad = self.blocks * self.block - self.anchors
        padded_rows, padded_positives = tf.pad(rows, [[0, pad]]), tf.pad(positives, [[0, pad]])
        chosen = []
        for j in range(self.blocks):
            window = slice(j * self.block, (j + 1) * self.block)
            chosen.append(
                self._mine_block(
                    embeddings,
                    classes,
                    (order, offsets, counts),
                    padded_rows[window],
                    padded_positives[window],
                    sign,
                    semi,
                )
            )
        chosen_p = tf.concat([c[0] for c in chosen], 0)[: self.anchors]
        chosen_n = tf.concat([c[1] for c in chosen], 0)[: self.anchors]
        triplets = tf.stack([rows, chosen_p, chosen_n], axis=1)
        # Fewer distinct anchors than triplets: go through them again, in a new order.
        slots = tf.range(self.size, dtype=tf.int64) % tf.maximum(distinct, 1)
        shuffle = tf.argsort(tf.random.stateless_uniform((self.size,), layout_seed))
        table = tf.gather(pool, tf.gather(triplets, tf.gather(slots, shuffle)))
        return tf.cond(usable, lambda: table, lambda: self._random_table(random_seed))

    def _random_table(self, seed):
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        anchor = self.index.random_anchors(seeds[0], (self.size,), eligible_only=True)
        positive = self.index.positive_partner(seeds[1], anchor)
        negative = self.index.negative_partner(seeds[2], anchor)
        return tf.stack([anchor, positive, negative], axis=1)

    def _mine_block_graph(self, embeddings, classes, grouping, rows, positives, sign, semi):
        """The mined positive and negative pool positions of each row.

        With `v = sign * d` (`sign` -1 for "easy"): the positive maximises `v`
        over the row's other class members (semi-hard: `positives` as given);
        the negative minimises `v` over the other classes' members, restricted
        for semi-hard to `d > d(a, p)` and falling back to the farthest. Ties
        go to the lowest pool position: members are searched in sample order,
        and the negative's position is the first one holding the target value
        (a min/max pass then an equality pass, cheaper on CPU than
        arg-reductions over the row).
        """
        dist = self.distance.dissimilarity(tf.gather(embeddings, rows), embeddings)
        inf = tf.constant(np.inf, dist.dtype)
        row_class = tf.gather(classes, rows)
        other = tf.not_equal(row_class[:, tf.newaxis], classes[tf.newaxis, :])
        order, offsets, counts = grouping
        slots = tf.range(self.max_members, dtype=tf.int64)[tf.newaxis, :]
        count = tf.gather(counts, row_class)[:, tf.newaxis]
        start = tf.gather(offsets, row_class)[:, tf.newaxis]
        members = tf.gather(order, start + tf.minimum(slots, count - 1))
        valid = tf.logical_and(slots < count, tf.not_equal(members, rows[:, tf.newaxis]))
        to_members = sign * tf.gather(dist, members, batch_dims=1)
        pick = tf.argmax(tf.where(valid, to_members, -inf), axis=1)
        chosen_p = tf.where(semi, positives, tf.gather(members, pick, batch_dims=1))

        d_ap = tf.gather(dist, chosen_p, batch_dims=1)[:, tf.newaxis]
        threshold = tf.where(semi, d_ap, -inf)
        value = sign * dist
        candidate = tf.logical_and(other, dist > threshold)
        nearest = tf.reduce_min(tf.where(candidate, value, inf), axis=1, keepdims=True)
        farthest = tf.reduce_max(tf.where(other, dist, -inf), axis=1, keepdims=True)
        target = tf.where(nearest < inf, nearest, sign * farthest)
        # Positions as floats: exact below 2**24 (float32) or 2**53 (float64).
        position_dtype = tf.float32 if self.pool < (1 << 24) else tf.float64
        positions = tf.range(tf.shape(dist)[1], dtype=position_dtype)[tf.newaxis, :]
        hit = tf.logical_and(other, tf.equal(value, target))
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
