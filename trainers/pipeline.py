"""Training input pipeline: infinite class-balanced (P classes x K samples) batches."""

import numpy as np
import tensorflow as tf

from tfmetric.data import class_balanced_dataset, image_augmentation, multi_view_dataset


def check_batch(y, classes_per_batch, samples_per_class):
    """Raises a ValueError naming the flag when P or K do not fit the training split."""
    classes = len(np.unique(y))
    if classes_per_batch < 2 or classes_per_batch > classes:
        raise ValueError(
            f"`--classes_per_batch` must be in [2, {classes}] (the training classes); "
            f"got {classes_per_batch}."
        )
    if samples_per_class < 2:
        raise ValueError(f"`--samples_per_class` must be >= 2; got {samples_per_class}.")


def training_dataset(x, y, classes_per_batch, samples_per_class, seed=0):
    """`tfmetric.data.class_balanced_dataset` batches of float32 inputs, prefetched.

    The models take float32 (they rescale pixel values inside); casting in the
    pipeline also lets `tf.distribute` reduce a batch across workers (its
    collectives have no uint8 kernel).
    """
    check_batch(y, classes_per_batch, samples_per_class)
    ds = class_balanced_dataset(x, y, classes_per_batch, samples_per_class, seed=seed)
    return ds.map(_as_float32).prefetch(tf.data.AUTOTUNE)


def _as_float32(x, y):
    return tf.cast(x, tf.float32), y


def _cast_inputs(inputs, labels):
    return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), inputs), labels


def training_data(kind, x, y, config, classes_per_batch, embedder=None, distance="euclidean",
                  schedule=None):  # fmt: skip
    """The training batches of a model kind (inputs float32), prefetched.

    `embedding` / `proxy`: P×K class-balanced batches (`embedding` with
    `config.views`: P×K/V samples × V augmented views, labelled by sample). `siamese`:
    `tfmetric.data.pair_dataset` pairs labelled 1 = same class. `triplet`:
    `tfmetric.data.triplet_dataset` triplets, random or mined offline with
    `embedder` (`config.mining`, or the `schedule` of a curriculum).
    """
    from tfmetric import data

    if kind == "embedding" and config.views:
        # Self-supervised: views labelled by sample, the class labels are not read.
        size = views_batch_size(classes_per_batch, config.samples_per_class, config.views, len(x))
        return view_dataset(x, size, config.views, config.seed)
    if kind in ("embedding", "proxy"):
        return training_dataset(x, y, classes_per_batch, config.samples_per_class, config.seed)
    if kind == "siamese":
        ds = data.pair_dataset(
            x, y, batch_size=config.global_batch_size,
            positive_fraction=config.positive_fraction, seed=config.seed,
        )  # fmt: skip
    else:
        mining = schedule if schedule is not None else config.mining
        ds = data.triplet_dataset(
            x, y, batch_size=config.global_batch_size, seed=config.seed,
            embedder=embedder if mining is not None else None, mining=mining,
            refresh_every=config.mining_refresh_every, distance=distance, pool_size=config.mining_pool,
        )  # fmt: skip
    return ds.map(_cast_inputs).prefetch(tf.data.AUTOTUNE)


def views_batch_size(classes_per_batch, samples_per_class, views, num_samples):
    """Samples per batch with `--views`: the P x K elements of a labelled batch, as views."""
    size = classes_per_batch * samples_per_class // views
    if size < 2 or size > num_samples:
        raise ValueError(
            f"`--views={views}` with `--classes_per_batch` x `--samples_per_class` = "
            f"{classes_per_batch * samples_per_class} elements gives batches of {size} samples; "
            f"it must be in [2, {num_samples}] (the training samples)."
        )
    return size


def view_dataset(x, batch_size, views, seed=0):
    """`tfmetric.data.multi_view_dataset` batches of float32 views, labelled by sample.

    Images (`(N, H, W, C)`, pixel values up to 255 for uint8 sources) get
    shifts, contrast and brightness jitter, noise and a cut-out scaled to their
    value range; feature vectors get Gaussian noise of a tenth of each
    feature's standard deviation.
    """
    x = np.asarray(x)
    scale = 255.0 if x.dtype == np.uint8 else float(max(np.max(np.abs(x)), 1e-6))
    x = x.astype(np.float32)
    if x.ndim == 4:
        augment = image_augmentation(
            max_shift=0.125, contrast=0.3, brightness=0.1 * scale, noise_stddev=0.1 * scale,
            cutout=0.25,
        )  # fmt: skip
    else:
        stddev = tf.constant(0.1 * np.std(x, axis=0), tf.float32)

        def augment(sample, seed):
            return sample + stddev * tf.random.stateless_normal(tf.shape(sample), seed)

    ds = multi_view_dataset(x, batch_size, augment, views=views, seed=seed)
    return ds.map(lambda xb, ids: (xb, tf.cast(ids, tf.int32))).prefetch(tf.data.AUTOTUNE)
