"""Index tables and graph-side random draws shared by the samplers."""

import numbers

import keras
import numpy as np
import tensorflow as tf

from tfmetric._src.autograph import as_written
from tfmetric.data.sources import as_source


def resolve_seed(seed):
    """An int seed; `None` draws one from numpy's global generator."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`seed` must be an integer or None; got {seed!r}.")
    return int(seed)


def check_augment(augment):
    if augment is not None and not callable(augment):
        raise TypeError(
            f"`augment` must be a Keras layer/model or a function of a batch; got {augment!r}."
        )
    return augment


def apply_augment(augment, batch):
    if augment is None:
        return batch
    if isinstance(augment, keras.layers.Layer):
        return augment(batch, training=True)
    return augment(batch)


class ClassIndex:
    """Samples grouped by class, as constant tensors for in-graph sampling.

    `order` lists the sample indices sorted by class; class `c` occupies
    `order[offsets[c]:offsets[c] + counts[c]]`. `class_of[i]` is the class
    number (0..C-1) of sample `i` and `rank[i]` its position within the class.
    """

    def __init__(self, x, y):
        self.source = as_source(x, y)
        labels = self.source.labels
        classes, class_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
        if classes.shape[0] < 2:
            raise ValueError(
                f"`y` must hold at least 2 classes; got {classes.shape[0]} ({classes.tolist()})."
            )
        order = np.argsort(class_of, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty_like(order)
        rank[order] = np.arange(order.shape[0]) - offsets[class_of[order]]
        self.num_samples = int(labels.shape[0])
        self.num_classes = int(classes.shape[0])
        self.max_count = int(counts.max())
        self.counts_np = counts
        self.class_of_np = class_of
        self.eligible_np = np.flatnonzero(counts[class_of] >= 2)
        self.order = tf.constant(order, tf.int64)
        self.offsets = tf.constant(offsets, tf.int64)
        self.counts = tf.constant(counts, tf.int64)
        self.class_of = tf.constant(class_of, tf.int64)
        self.rank = tf.constant(rank, tf.int64)
        self.labels = tf.constant(labels, tf.int64)
        self.eligible = tf.constant(self.eligible_np, tf.int64)

    def uniform_int(self, seed, shape, maxval):
        """Integers in `[0, maxval)` (`maxval` broadcast against `shape`)."""
        u = tf.random.stateless_uniform(shape, seed, dtype=tf.float64)
        value = tf.cast(tf.floor(u * tf.cast(maxval, tf.float64)), tf.int64)
        return tf.minimum(value, tf.cast(maxval, tf.int64) - 1)

    def positive_partner(self, seed, anchors):
        """Another sample of the anchor's class (the anchor's class has >= 2)."""
        cls = tf.gather(self.class_of, anchors)
        count = tf.gather(self.counts, cls)
        shift = 1 + self.uniform_int(seed, tf.shape(anchors), count - 1)
        position = (tf.gather(self.rank, anchors) + shift) % count
        return tf.gather(self.order, tf.gather(self.offsets, cls) + position)

    def negative_partner(self, seed, anchors):
        """A uniformly drawn sample of any other class."""
        cls = tf.gather(self.class_of, anchors)
        count = tf.gather(self.counts, cls)
        offset = tf.gather(self.offsets, cls)
        slot = self.uniform_int(seed, tf.shape(anchors), self.num_samples - count)
        slot = tf.where(slot >= offset, slot + count, slot)
        return tf.gather(self.order, slot)

    def random_anchors(self, seed, shape, eligible_only):
        if eligible_only:
            pick = self.uniform_int(seed, shape, self.eligible_np.shape[0])
            return tf.gather(self.eligible, pick)
        return self.uniform_int(seed, shape, self.num_samples)


# Batches drawn per call of a sampler's graph function: the index draws are vectorised
# over the group, which amortises the per-call and per-op overhead.
GROUP = 8


def step_seeds(seed, step, count):
    """`count` independent stateless seeds for group number `step`."""
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
    return tf.unstack(tf.random.experimental.stateless_split(base, count))


def build(draw, emit, augment, prefetch_draws=False, mode=None):
    """Dataset of batches from index draws.

    Args:
        draw: Graph function `block number -> indices`, a nest of tensors
            whose first axis holds several batches.
        emit: Graph function `(indices, augment_fn) -> batch` for the indices
            of one batch.
        augment: The augmentation hook or `None`.
        prefetch_draws: Compute the next block of indices while the batches of
            the current one are emitted (for expensive draws: offline mining).
        mode: `None`, or a graph function returning the current mining mode
            (an int32 scalar read from a variable that a curriculum changes).
            Each block is tagged with the mode it was drawn with; a batch whose
            block was drawn with another mode than the current one is taken
            from the block drawn again with the current mode (once per block
            and mode change), so a mode change applies from the next batch
            produced, not from the next block.
    """
    dataset = tf.data.Dataset.counter()
    # The draws are tfmetric's own graph code, traced as written; `emit` calls the
    # user's `augment` and keeps AutoGraph (`tfmetric._src.autograph`).
    if mode is None:
        dataset = dataset.map(as_written(draw))
    else:
        dataset = dataset.map(as_written(lambda block: _tagged_draw(draw, mode, block)))
    if prefetch_draws:
        dataset = dataset.prefetch(1)
    if mode is not None:
        dataset = _redraw_on_mode_change(dataset, draw, mode)
    # One gather per batch, in parallel: gathering a whole block and then
    # splitting it into batches would copy every sample twice.
    dataset = dataset.unbatch() if mode is None else dataset
    dataset = dataset.map(
        lambda indices: emit(indices, lambda batch: apply_augment(augment, batch)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _tagged_draw(draw, mode, block):
    """`(block, mode code, indices)`: the code is read before drawing (a change in
    between makes the block look stale and be drawn again, never the reverse)."""
    code = mode()
    with tf.control_dependencies([code]):
        return block, code, draw(block)


def _redraw_on_mode_change(dataset, draw, mode):
    """Per-batch indices; batches of a block drawn with a stale mode come from a redraw."""
    spec = dataset.element_spec[2]
    rows = tf.nest.flatten(spec)[0].shape[0]

    def split(block, code, indices):
        return tf.data.Dataset.from_tensor_slices(
            (
                tf.fill([rows], block),
                tf.range(rows, dtype=tf.int64),
                tf.fill([rows], code),
                indices,
            )
        )

    def step(state, element):
        cached_block, cached_code, cached = state
        block, position, code, indices = element
        current = mode()
        fresh = tf.equal(code, current)
        cached_ok = tf.logical_and(
            tf.equal(cached_block, block), tf.equal(cached_code, current)
        )
        redraw = tf.logical_and(tf.logical_not(fresh), tf.logical_not(cached_ok))
        with tf.control_dependencies([current]):
            table = tf.cond(redraw, lambda: draw(block), lambda: cached)
        state = (
            tf.where(redraw, block, cached_block),
            tf.where(redraw, current, cached_code),
            table,
        )
        row = tf.nest.map_structure(lambda t: t[position], table)
        return state, tf.cond(fresh, lambda: indices, lambda: row)

    empty = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), spec)
    initial = (tf.constant(-1, tf.int64), tf.constant(-1, tf.int32), empty)
    return dataset.flat_map(as_written(split)).scan(initial, as_written(step))
