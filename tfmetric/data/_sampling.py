"""Index tables and graph-side random draws shared by the samplers."""

import numbers

import keras
import numpy as np
import tensorflow as tf

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


def build(draw, emit, augment, prefetch_draws=False):
    """Dataset of batches from index draws.

    Args:
        draw: Graph function `block number -> indices`, a nest of tensors
            whose first axis holds several batches.
        emit: Graph function `(indices, augment_fn) -> batch` for the indices
            of one batch.
        augment: The augmentation hook or `None`.
        prefetch_draws: Compute the next block of indices while the batches of
            the current one are emitted (for expensive draws: offline mining).
    """
    dataset = tf.data.Dataset.counter().map(draw)
    if prefetch_draws:
        dataset = dataset.prefetch(1)
    # One gather per batch, in parallel: gathering a whole block and then
    # splitting it into batches would copy every sample twice.
    dataset = dataset.unbatch().map(
        lambda indices: emit(indices, lambda batch: apply_augment(augment, batch)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)
