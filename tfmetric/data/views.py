"""Batches of several augmented views of each sample, for self-supervised training."""

import inspect

import keras
import numpy as np
import tensorflow as tf

from tfmetric._src import inputs, validation
from tfmetric.data import _sampling

__all__ = ["image_augmentation", "multi_view_dataset"]


def _takes_seed(augment):
    """Whether `augment` is a function called as `augment(x, seed)`."""
    if isinstance(augment, keras.layers.Layer):
        return False
    try:
        parameters = inspect.signature(augment).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) >= 2 or any(p.name == "seed" for p in parameters)


def _check_views_shapes(views):
    shapes = [tuple(v.shape) for v in views]
    if any(shape != shapes[0] for shape in shapes):
        raise ValueError(
            "`augment` must return views of one shape (they are stacked into one batch); got "
            f"shapes {shapes}."
        )


def _check_samples(x):
    """`x` as one numpy array or tensor of samples `(N, ...)`; a named error otherwise."""
    if isinstance(x, (tf.data.Dataset, dict)) or not (
        isinstance(x, (tf.Tensor, np.ndarray, list, tuple)) or hasattr(x, "__array__")
    ):
        raise TypeError(
            "`x` must be an array or tensor of samples, shape (N, ...); got "
            f"{type(x).__name__}. (A tf.data.Dataset can be read into an array first, e.g. "
            "`np.stack(list(dataset.as_numpy_iterator()))`.)"
        )
    if not isinstance(x, tf.Tensor):
        try:
            x = np.asarray(x)
        except ValueError as error:
            raise ValueError(
                f"`x` must be an array of samples of one shape, (N, ...); {error}"
            ) from None
    dtype = np.dtype(x.dtype.as_numpy_dtype if isinstance(x, tf.Tensor) else x.dtype)
    if dtype.kind not in "biufSU" and not (isinstance(x, tf.Tensor) and x.dtype == tf.string):
        raise ValueError(
            f"`x` must hold numbers, bools or strings (one array of samples); got dtype {dtype}."
        )
    if len(x.shape) == 0:
        raise ValueError(f"`x` must have a sample axis, shape (N, ...); got a scalar {x!r}.")
    return x


def multi_view_dataset(x, batch_size, augment, y=None, views=2, seed=None):
    """Infinite batches holding `views` independently augmented views of each sample.

    SimCLR-style training needs two random augmentations of every sample of a
    batch: they are each other's positives, every other view in the batch is a
    negative. Each batch draws `batch_size` samples (a seeded shuffle of the
    data, repeated forever) and holds their views **view by view**: element
    `v * batch_size + i` is view `v` of sample `i`, so the batch has
    `views * batch_size` elements (a static shape, as `jit_compile=True`
    needs).

    The labels are the sample's index in `x` (int64), so two views of one
    sample share a label and `tfmetric.losses.NTXentLoss` treats them as the
    positive pair — no class labels are needed. With `y`, the labels are the
    class labels instead (supervised contrastive training on views:
    `tfmetric.losses.SupervisedContrastiveLoss`).

    `augment` runs in the `tf.data` graph:
    - a function `augment(sample, seed)` is called per sample and view with a
      stateless seed (a shape-`(2,)` int32 tensor) derived from `seed`, the
      position in the stream and the view number: the same `seed` gives the
      same batches (see `tfmetric.data.image_augmentation`);
    - any other callable (a function of one argument, or a Keras preprocessing
      layer/model, called with `training=True`) is applied to the batch of
      each view; its randomness is then its own.

    Args:
        x: Samples: an array or tensor of shape `(N, ...)`.
        batch_size: Samples per batch (each gives `views` elements).
        augment: `augment(sample, seed)`, a function of a batch, or a Keras
            preprocessing layer/model.
        y: Optional integer class labels of shape `(N,)`. Defaults to `None`
            (labels are sample indices).
        views: Views per sample (`>= 2`). Defaults to `2`.
        seed: Integer seed of the shuffle and of seeded augmentations; `None`
            draws one from numpy's global generator.

    Returns:
        An infinite `tf.data.Dataset` of `(x_batch, labels)` with
        `views * batch_size` elements per batch.

    Raises:
        ValueError: `x` without a sample axis, ragged, or of another dtype
            than numbers, bools or strings; `batch_size` larger than the
            number of samples, `views < 2`, `y` not matching `x`, or
            `augment` returning views of different shapes.
        TypeError: `x` that is not one array or tensor (a dataset, a dict),
            `augment` not callable.

    Example:

    >>> import tensorflow as tf
    >>> x = np.arange(12, dtype="float32").reshape(6, 2)
    >>> def jitter(sample, seed):
    ...     return sample + tf.random.stateless_normal(tf.shape(sample), seed)
    >>> ds = tfmetric.data.multi_view_dataset(x, batch_size=4, augment=jitter, seed=0)
    >>> xb, yb = next(iter(ds))
    >>> tuple(xb.shape), bool((yb[:4] == yb[4:]).numpy().all())
    ((8, 2), True)

    Reference:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations", ICML 2020.
    """
    if augment is None or not callable(augment):
        raise TypeError(
            "`augment` must be a function `augment(sample, seed)`, a function of a batch or a "
            f"Keras preprocessing layer; got {augment!r}."
        )
    x = _check_samples(x)
    n = int(x.shape[0])
    batch_size = validation.check_int(batch_size, "batch_size")
    views = validation.check_int(views, "views", 2)
    if batch_size > n:
        raise ValueError(f"`batch_size` ({batch_size}) is larger than the number of samples ({n}).")
    if y is not None:
        labels = tf.constant(inputs.check_label_array(y, "y", n, "x"))
    else:
        labels = tf.range(n, dtype=tf.int64)
    seed = _sampling.resolve_seed(seed)
    data = tf.constant(x)
    per_sample = _takes_seed(augment)

    def sample_views(position, index):
        sample = tf.gather(data, index)
        outputs = []
        for view in range(views):
            stream = tf.cast(position * views + view, tf.int32)
            view_seed = tf.stack([tf.constant(seed % 2**31, tf.int32), stream])
            outputs.append(augment(sample, view_seed))
        _check_views_shapes(outputs)
        return tuple(outputs), tf.gather(labels, index)

    def batch_views(samples, index):
        if per_sample:
            stacked = samples
        else:
            stacked = tuple(_sampling.apply_augment(augment, samples) for _ in range(views))
            _check_views_shapes(stacked)
        return tf.concat(stacked, axis=0), tf.tile(tf.gather(labels, index), [views])

    indices = (
        tf.data.Dataset.range(n)
        .shuffle(n, seed=seed, reshuffle_each_iteration=True)
        .repeat()
    )
    if per_sample:
        dataset = indices.enumerate().map(
            lambda position, index: (sample_views(position, index)[0], index),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    else:
        dataset = indices.map(lambda index: (tf.gather(data, index), index))
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(batch_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def image_augmentation(
    max_shift=0.125,
    horizontal_flip=False,
    brightness=0.0,
    contrast=0.0,
    noise_stddev=0.0,
    cutout=0.0,
):
    """A seeded image augmentation `augment(image, seed)` for `multi_view_dataset`.

    Built from stateless `tf.image` / `tf.random` ops (graph mode, the same
    output for the same seed): a random translation by up to `max_shift` of
    the height and width (reflect padding, then a random crop), an optional
    horizontal flip, brightness and contrast jitter, additive Gaussian noise
    and a random square cut-out. Images are `(H, W, C)` floats.

    Args:
        max_shift: Largest translation, as a fraction of each side, in
            `[0, 1)`. Defaults to `0.125`.
        horizontal_flip: Flip left-right with probability 1/2. Defaults to
            `False` (digits and text should not be flipped).
        brightness: Largest additive brightness change (`>= 0`), in the
            images' units. Defaults to `0.0`.
        contrast: Contrast factor drawn from `[1 - contrast, 1 + contrast]`,
            `contrast` in `[0, 1)`. Defaults to `0.0`.
        noise_stddev: Standard deviation of added Gaussian noise (`>= 0`).
            Defaults to `0.0`.
        cutout: Side of a zeroed square, as a fraction of the shorter side, in
            `[0, 1)`. Defaults to `0.0` (none).

    Returns:
        A function `augment(image, seed)`.

    Example:

    >>> augment = tfmetric.data.image_augmentation(max_shift=0.25, noise_stddev=0.1)
    >>> image = np.ones((8, 8, 1), "float32")
    >>> out = augment(image, np.array([1, 2], "int32"))
    >>> tuple(out.shape), bool(np.allclose(out, augment(image, np.array([1, 2], "int32"))))
    ((8, 8, 1), True)

    Reference:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations", ICML 2020 (section 3, data augmentation).
    """
    for name, value in (("max_shift", max_shift), ("contrast", contrast), ("cutout", cutout)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
            raise ValueError(f"`{name}` must be a number in [0, 1); got {value!r}.")
    for name, value in (("brightness", brightness), ("noise_stddev", noise_stddev)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"`{name}` must be a number >= 0; got {value!r}.")
    if not isinstance(horizontal_flip, bool):
        raise TypeError(f"`horizontal_flip` must be a bool; got {horizontal_flip!r}.")

    def augment(image, seed):
        image = tf.convert_to_tensor(image)
        if image.shape.rank != 3:
            raise ValueError(
                f"`image` must have shape (height, width, channels); got {tuple(image.shape)}."
            )
        dtype = image.dtype
        image = tf.cast(image, tf.float32)
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 6)
        height, width, channels = image.shape
        if max_shift > 0:
            pad_h, pad_w = int(round(height * max_shift)), int(round(width * max_shift))
            padded = tf.pad(image, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT")
            image = tf.image.stateless_random_crop(
                padded, (height, width, channels), seed=seeds[0]
            )
        if horizontal_flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
        if brightness > 0:
            image = tf.image.stateless_random_brightness(image, brightness, seed=seeds[2])
        if contrast > 0:
            image = tf.image.stateless_random_contrast(
                image, 1.0 - contrast, 1.0 + contrast, seed=seeds[3]
            )
        if noise_stddev > 0:
            image = image + tf.random.stateless_normal(tf.shape(image), seeds[4]) * noise_stddev
        side = int(round(min(height, width) * cutout))
        if side > 0:
            corner = tf.random.stateless_uniform((2,), seeds[5]) * [
                height - side + 1,
                width - side + 1,
            ]
            corner = tf.cast(corner, tf.int32)
            rows = tf.range(height)[:, None]
            cols = tf.range(width)[None, :]
            inside = (
                (rows >= corner[0])
                & (rows < corner[0] + side)
                & (cols >= corner[1])
                & (cols < corner[1] + side)
            )
            image = tf.where(inside[:, :, None], 0.0, image)
        return tf.cast(image, dtype)

    return augment
