"""Class-balanced "P×K" batches for in-batch mining losses."""

import tensorflow as tf

from tfmetric._src import validation
from tfmetric.data import _sampling

__all__ = ["class_balanced_dataset"]


def class_balanced_dataset(
    x, y=None, classes_per_batch=8, samples_per_class=4, seed=None, augment=None
):
    """Infinite batches of exactly P classes × K samples, drawn in the graph.

    Batch-hard and semi-hard triplet mining, multi-similarity and the other
    in-batch losses need several samples of several classes in every batch.
    Each batch holds `classes_per_batch` (P) distinct classes drawn uniformly
    without replacement, and `samples_per_class` (K) samples of each, laid out
    class by class: `labels[k*K:(k+1)*K]` are equal. Within a class the K
    samples are distinct when the class has at least K samples; **a class
    with fewer than K samples contributes each of its samples once and fills
    the remaining slots by drawing from its samples with replacement** (so it
    still appears with exactly K elements).

    Everything runs in `tf.data` graph functions: vectorised index draws and
    one gather for a group of batches at a time, seeded with `(seed, group
    number)` so that the stream of batches is the same for the same seed
    (decoding and augmentation then run per batch). The batch shape is
    static (`P * K`), as `jit_compile=True` requires. Sampling draws `P`
    random keys per sample of the largest class per batch.

    Args:
        x: Inputs: an array (or a nest of arrays) with labels `y`; a finite
            `tf.data.Dataset` of `(x, y)` elements (read once into memory); or
            a `tfmetric.data.Source` such as `tfmetric.data.image_directory(...)`
            or `tfmetric.data.tfrecord_source(...)` (decoded per batch).
        y: Integer class labels when `x` holds arrays; otherwise `None`.
        classes_per_batch: P, the number of distinct classes per batch
            (`2 <= P <=` number of classes). Defaults to `8`.
        samples_per_class: K, samples per class (`>= 2`, so that every sample
            has a positive). Defaults to `4`.
        seed: Integer seed; `None` draws one from numpy's global generator.
        augment: Optional Keras preprocessing layer/model (called with
            `training=True`) or function applied to each batch of inputs.

    Returns:
        An infinite `tf.data.Dataset` of `(x_batch, labels)` with `P * K`
        elements; `labels` are the original integer labels (int64).

    Raises:
        ValueError: fewer than 2 classes, `classes_per_batch` larger than the
            number of classes, `samples_per_class < 2`, mismatched `x`/`y`.

    Example:

    >>> x = np.arange(20, dtype="float32").reshape(10, 2)
    >>> y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    >>> ds = tfmetric.data.class_balanced_dataset(x, y, 2, 3, seed=0)
    >>> xb, yb = next(iter(ds))
    >>> tuple(xb.shape), len(set(yb.numpy().tolist()))
    ((6, 2), 2)

    Reference:
        Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
        Re-Identification", 2017 (P×K batches).
    """
    index = _sampling.ClassIndex(x, y)
    p = validation.check_int(classes_per_batch, "classes_per_batch", 2)
    k = validation.check_int(samples_per_class, "samples_per_class", 2)
    if p > index.num_classes:
        raise ValueError(
            f"`classes_per_batch` ({p}) is larger than the number of classes ({index.num_classes})."
        )
    seed = _sampling.resolve_seed(seed)
    augment = _sampling.check_augment(augment)
    width = max(index.max_count, k)
    source = index.source

    def draw(step):
        class_seed, key_seed, fill_seed = _sampling.step_seeds(seed, step, 3)
        group = _sampling.GROUP
        class_keys = tf.random.stateless_uniform((group, index.num_classes), class_seed)
        classes = tf.math.top_k(class_keys, p).indices
        count = tf.expand_dims(tf.gather(index.counts, classes), -1)
        # Distinct positions: the top-K of random keys over each class's own slots.
        slots = tf.range(width, dtype=tf.int64)
        keys = tf.random.stateless_uniform((group, p, width), key_seed)
        keys = tf.where(slots < count, keys, -1.0)
        distinct = tf.cast(tf.math.top_k(keys, k).indices, tf.int64)
        fill = index.uniform_int(fill_seed, (group, p, k), count)
        position = tf.where(slots[:k] < count, distinct, fill)
        start = tf.expand_dims(tf.gather(index.offsets, classes), -1)
        return tf.reshape(tf.gather(index.order, start + position), (group, p * k))

    def emit(indices, augment_fn):
        return augment_fn(source.gather(indices)), tf.gather(index.labels, indices)

    return _sampling.build(draw, emit, augment)
