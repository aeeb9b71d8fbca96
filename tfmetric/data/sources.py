"""Data sources for the samplers: numpy arrays, `tf.data.Dataset`, image folders, TFRecords.

Every sampler in `tfmetric.data` draws indices in the TensorFlow graph and
gathers a whole batch at once, so it needs random access to the data. A
`Source` provides it: `x`, a nest of tensors indexed along the first axis
(the samples themselves, image paths or serialized records), integer `labels`,
and an optional graph function `decode` that turns one gathered element into
the model input (reading and resizing an image, parsing a record). What is
kept in memory is only `x`; decoding happens per batch, after sampling.

Labels may be integers or strings (identities such as `"George_W_Bush"`):
string labels are numbered in sorted order and the names kept in
`Source.class_names`, so that `class_names[label]` maps an integer label back.
"""

import numbers
import os
import re

import numpy as np
import tensorflow as tf

from tfmetric._src import inputs

__all__ = [
    "Source",
    "as_source",
    "encode_labels",
    "image_directory",
    "read_images",
    "tfrecord_source",
]

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def encode_labels(labels):
    """Maps string labels to integer ids; returns `(ids, names)`, `names[id]` the label.

    Integer labels (or whole floats) are returned as int64 with `names=None`.
    Strings (or bytes, decoded as UTF-8) are numbered in sorted order.

    Args:
        labels: Labels of shape `(n,)` (or `(n, 1)`).

    Returns:
        `(ids, names)`: int64 ids of shape `(n,)` and a list of the label
        names, or `None` for integer labels.

    Raises:
        ValueError: for labels that are neither integers nor strings.

    Example:

    >>> ids, names = tfmetric.data.encode_labels(["bob", "ada", "bob"])
    >>> ids.tolist(), names
    ([1, 0, 1], ['ada', 'bob'])
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"`y` must be 1-D class labels; got shape {labels.shape}.")
    if labels.dtype.kind in "USO" and labels.size:
        texts = [v.decode("utf-8") if isinstance(v, bytes) else v for v in labels.tolist()]
        if not all(isinstance(v, str) for v in texts):
            raise ValueError(
                "`y` must hold integer class labels or strings; got a mix of "
                f"{sorted({type(v).__name__ for v in texts})}."
            )
        names, ids = np.unique(np.array(texts, dtype=str), return_inverse=True)
        return ids.astype(np.int64), names.tolist()
    return inputs.check_label_array(labels, "y"), None


def check_image_size(image_size):
    """`image_size` as `(height, width)`: two integers >= 1, or one integer `n` for `(n, n)`."""
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, (bool, np.bool_)):
        image_size = (image_size, image_size)
    if (
        isinstance(image_size, (str, bytes))
        or not hasattr(image_size, "__len__")
        or len(image_size) != 2
        or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_)) and s >= 1
            for s in image_size
        )
    ):
        raise ValueError(
            "`image_size` must be (height, width), two integers >= 1, or one integer n for "
            f"(n, n); got {image_size!r}."
        )
    return int(image_size[0]), int(image_size[1])


def check_image_folder(directory, channels, image_size):
    """Validates the arguments of a folder of images; returns `(directory, (height, width))`."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"`directory` {directory!r} does not exist or is not a folder.")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3; got {channels!r}.")
    return directory, check_image_size(image_size)


class Source:
    """Random-access data for the samplers: `x`, integer `labels`, optional `decode`.

    Args:
        x: A numpy array / tensor, or a nest (tuple, dict) of them, whose first
            axis indexes the samples.
        labels: Class labels, one per sample: integers, or strings (mapped to
            integers in sorted order, the names kept in `class_names`).
        decode: Optional graph function applied to one gathered element of `x`
            (e.g. a file path) to produce the model input. Defaults to `None`.
        class_names: Optional names of the classes, indexed by label (set
            from string labels).
    """

    def __init__(self, x, labels, decode=None, class_names=None):
        flat = tf.nest.flatten(x)
        if not flat:
            raise ValueError("`x` must hold at least one array.")
        labels, names = encode_labels(labels)
        if names is not None:
            if class_names is not None:
                raise ValueError(
                    "`class_names` must be None when the labels are strings (they name the "
                    "classes)."
                )
            class_names = names
        lengths = {int(tf.shape(a)[0]) for a in flat}
        if len(lengths) != 1 or lengths.pop() != labels.shape[0]:
            raise ValueError(
                "`x` and `y` must have the same number of samples; got x lengths "
                f"{sorted({int(tf.shape(a)[0]) for a in flat})} and {labels.shape[0]} labels."
            )
        if labels.shape[0] == 0:
            raise ValueError("`x` and `y` are empty; at least two classes are needed.")
        self.x = tf.nest.map_structure(tf.convert_to_tensor, x)
        self.labels = labels
        self.decode = decode
        self.class_names = class_names
        self._spec = None

    def __len__(self):
        return int(self.labels.shape[0])

    def gather(self, indices):
        """Graph function: the decoded batch `x[indices]`."""
        batch = tf.nest.map_structure(lambda a: tf.gather(a, indices), self.x)
        if self.decode is None:
            return batch
        return tf.map_fn(self.decode, batch, fn_output_signature=self._decoded_spec())

    def _decoded_spec(self):
        if self._spec is None:
            element = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape[1:], a.dtype), self.x)
            outputs = tf.function(self.decode).get_concrete_function(element).structured_outputs
            self._spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), outputs)
        return self._spec


def as_source(x, y=None):
    """Turns the `(x, y)` arguments of a sampler into a `Source`.

    Args:
        x: A `Source` (then `y` must be `None`); a `tf.data.Dataset` of finite
            `(x, y)` elements, read once into memory (then `y` must be
            `None`); or arrays (a nest of arrays) with labels `y`.
        y: Labels (integers or strings) when `x` holds arrays.

    Returns:
        A `Source`.

    Raises:
        ValueError: for missing or extra labels, mismatched lengths, an
            infinite dataset, a batched dataset (labels of shape `(batch,)` per
            element: pass `x.unbatch()`).
    """
    if isinstance(x, Source):
        if y is not None:
            raise ValueError("`y` must be None when `x` is a Source (it holds the labels).")
        return x
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("`y` must be None when `x` is a tf.data.Dataset of (x, y) elements.")
        if x.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError("`x` is an infinite tf.data.Dataset; a finite dataset is needed.")
        spec = x.element_spec
        if not isinstance(spec, tuple) or len(spec) != 2:
            raise ValueError(
                f"`x` must be a tf.data.Dataset of (x, y) elements; got element spec {spec}."
            )
        label_shape = getattr(spec[1], "shape", None)
        if label_shape is not None and label_shape.rank and label_shape.as_list() != [1]:
            raise ValueError(
                "`x` must be a tf.data.Dataset of single (x, y) samples, one label each; its "
                f"labels have shape {label_shape} per element, as in a batched dataset. Pass "
                "`x.unbatch()` (the samplers form their own batches)."
            )
        return _dataset_source(x, spec)
    if y is None:
        raise ValueError("`y` (class labels) is required when `x` holds arrays.")
    if isinstance(x, list):
        x = np.asarray(x)  # a list is one array of samples, not a nest of inputs
    return Source(tf.nest.map_structure(np.asarray, x), y)


def _dataset_source(dataset, spec):
    """The `Source` of a finite dataset of `(x, y)` elements, read into memory as one batch."""
    try:
        batch = next(iter(dataset.batch(np.iinfo(np.int32).max).take(1)), None)
    except tf.errors.InvalidArgumentError as error:
        varying = any(
            not s.shape.is_fully_defined() for s in tf.nest.flatten(spec) if hasattr(s, "shape")
        )
        if not varying or "different shapes" not in str(error):
            raise
        raise ValueError(
            f"`x` is a tf.data.Dataset whose elements have different shapes (element spec "
            f"{spec}); the samplers stack them into arrays. Resize them first (e.g. "
            "`x.map(lambda image, label: (tf.image.resize(image, (64, 64)), label))`), or read "
            "images with `tfmetric.data.image_directory` or `tfmetric.data.tfrecord_source`, "
            "which decode and resize per batch."
        ) from None
    if batch is None:
        raise ValueError("`x` and `y` are empty; at least two classes are needed.")
    features, labels = batch
    return Source(tf.nest.map_structure(np.asarray, features), np.asarray(labels))


def _has_image_magic(path):
    with open(path, "rb") as handle:
        head = handle.read(8)
    return head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n")


def _decode_image_fn(image_size, channels):
    def decode(path):
        contents = tf.io.read_file(path)
        is_png = tf.equal(tf.strings.substr(contents, 0, 4), b"\x89PNG")
        tf.debugging.Assert(
            tf.logical_or(tf.io.is_jpeg(contents), is_png),
            ["Not a JPEG or PNG image:", path],
        )
        image = tf.io.decode_image(contents, channels=channels, expand_animations=False)
        image = tf.image.resize(image, image_size)
        image.set_shape((*image_size, channels))
        return image

    return decode


def image_directory(directory, image_size=(64, 64), channels=3, validate=True):
    """A `Source` of images stored in one sub-folder per class.

    `directory/<class name>/<image>.{jpg,jpeg,png}`; classes are numbered in
    the sorted order of the sub-folder names. Only the file paths are kept in
    memory; images are read, decoded and resized (bilinear, to float32 values
    in `[0, 255]`) in the graph, per batch, after sampling.

    Corrupt files are an error, never silently skipped: with `validate=True`
    every image is decoded once here (in a parallel `tf.data` pass) and a
    `ValueError` lists the files that cannot be decoded. With
    `validate=False` (for very large folders) only at training time a file
    that is not a JPEG/PNG fails with an error naming it.

    Args:
        directory: Path of the folder of class sub-folders.
        image_size: `(height, width)` of the resized images, or one integer
            `n` for `(n, n)`. Defaults to `(64, 64)`.
        channels: 1 (grayscale) or 3 (RGB). Defaults to `3`.
        validate: Decode every file once to detect corrupt images. Defaults
            to `True`.

    Returns:
        A `Source` whose `class_names` are the sub-folder names.

    Raises:
        ValueError: for a missing directory, no class sub-folder, an empty
            class folder, or unreadable / corrupt image files.
    """
    directory, image_size = check_image_folder(directory, channels, image_size)
    class_names = sorted(
        name for name in os.listdir(directory) if os.path.isdir(os.path.join(directory, name))
    )
    if not class_names:
        raise ValueError(f"`directory` {directory!r} has no class sub-folders.")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(directory, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(_IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(
                f"Class folder {folder!r} holds no .jpg/.jpeg/.png image; remove it or add images."
            )
        paths.extend(os.path.join(folder, f) for f in files)
        labels.extend([label] * len(files))
    decode = _decode_image_fn(image_size, channels)
    if validate:
        _check_images(paths, channels)
    return Source(np.asarray(paths), np.asarray(labels), decode=decode, class_names=class_names)


def _check_images(paths, channels):
    bad = [p for p in paths if not _has_image_magic(p)]
    if not bad:
        # Decode everything once; the indices that the decoding drops are the corrupt files.
        def try_decode(index, path):
            image = tf.io.decode_image(
                tf.io.read_file(path), channels=channels, expand_animations=False
            )
            return index, tf.shape(image)[0]

        decoded = (
            tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), np.asarray(paths)))
            .map(try_decode, num_parallel_calls=tf.data.AUTOTUNE)
            .ignore_errors()
            .map(lambda index, _: index)
            .batch(len(paths))
        )
        ok = set()
        for indices in decoded:
            ok.update(indices.numpy().tolist())
        bad = [p for i, p in enumerate(paths) if i not in ok]
    if bad:
        shown = ", ".join(repr(p) for p in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(f"{len(bad)} corrupt or unreadable image file(s): {shown}{more}.")


def tfrecord_source(filenames, parse_fn):
    """A `Source` of TFRecord files.

    The serialized records are read once into memory, file by file; `parse_fn`
    runs in the graph, once on every record here to read the labels and per
    batch after sampling to produce the inputs. A truncated or corrupt file,
    or a record `parse_fn` cannot parse, is reported here with the file's name.

    Args:
        filenames: A path or a list of paths of TFRecord files.
        parse_fn: Graph function `serialized -> (x, label)` (e.g. with
            `tf.io.parse_single_example`), `label` an integer or string
            scalar.

    Returns:
        A `Source`.

    Raises:
        ValueError: for no file, a missing file, a truncated or corrupt file
            or a record `parse_fn` fails on (naming the file), or an empty set
            of records.
    """
    if isinstance(filenames, (str, os.PathLike)):
        filenames = [filenames]
    filenames = [os.fspath(f) for f in filenames]
    if not filenames:
        raise ValueError("`filenames` is empty.")
    missing = [f for f in filenames if not os.path.isfile(f)]
    if missing:
        raise ValueError(f"`filenames` not found: {missing}.")
    chunks = [_read_records(f) for f in filenames]
    serialized = np.concatenate([c for c in chunks if c.size] or [np.zeros(0, object)])
    if not serialized.size:
        raise ValueError(f"`filenames` hold no record: {filenames}.")
    try:
        labels = _parse_labels(serialized, parse_fn)
    except tf.errors.OpError as error:
        # Only on failure: parse file by file to name the file that fails.
        for filename, records in zip(filenames, chunks, strict=True):
            if records.size:
                try:
                    _parse_labels(records, parse_fn)
                except tf.errors.OpError as file_error:
                    raise ValueError(
                        f"`parse_fn` fails on a record of {filename!r}: "
                        f"{_first_line(file_error.message)}"
                    ) from None
        raise ValueError(f"`parse_fn` fails on the records: {_first_line(error.message)}") from None
    return Source(serialized, labels, decode=lambda s: parse_fn(s)[0])


def _read_records(filename):
    """Every serialized record of one TFRecord file, with errors naming the file."""
    try:
        batches = list(
            tf.data.TFRecordDataset(filename).batch(np.iinfo(np.int32).max).as_numpy_iterator()
        )
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(
            f"TFRecord file {filename!r} is truncated or corrupt: {_first_line(error.message)}"
        ) from None
    records = batches[0] if batches else np.zeros(0, object)
    # TensorFlow reads a file cut inside a record's 12-byte header as if it ended
    # there: every record is framed by 16 bytes, so the sizes must add up.
    expected = 16 * len(records) + sum(len(r) for r in records.tolist())
    size = os.path.getsize(filename)
    if size != expected:
        raise ValueError(
            f"TFRecord file {filename!r} is truncated or corrupt: {size} bytes, but its "
            f"{len(records)} complete records take {expected}."
        )
    return records


def _parse_labels(serialized, parse_fn):
    return (
        tf.data.Dataset.from_tensor_slices(serialized)
        .map(lambda s: parse_fn(s)[1], num_parallel_calls=tf.data.AUTOTUNE)
        .batch(serialized.shape[0])
        .get_single_element()
        .numpy()
    )


def _first_line(message):
    """A TensorFlow error message without its graph-function context."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    message = message.split("\n")[0].strip()
    return re.sub(r"\s*\[Op:\w+\].*$", "", message)


def read_images(paths, image_size=(64, 64), channels=3):
    """Reads, decodes and resizes image files into one array.

    The same decoding as `image_directory` (JPEG or PNG, bilinear resize,
    float32 values in `[0, 255]`), in a parallel `tf.data` pass.

    Args:
        paths: Image file paths.
        image_size: `(height, width)`, or one integer `n` for `(n, n)`.
            Defaults to `(64, 64)`.
        channels: 1 (grayscale) or 3 (RGB). Defaults to `3`.

    Returns:
        A float32 numpy array `(len(paths), height, width, channels)`.

    Raises:
        ValueError: for missing or corrupt files (listing them), bad
            `image_size` or `channels`.
    """
    paths = [os.fspath(p) for p in paths]
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3; got {channels!r}.")
    image_size = check_image_size(image_size)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{len(missing)} image file(s) not found: {missing[:10]}.")
    if not paths:
        return np.zeros((0, *image_size, channels), np.float32)
    _check_images(paths, channels)
    decode = _decode_image_fn(image_size, channels)
    dataset = (
        tf.data.Dataset.from_tensor_slices(np.asarray(paths))
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(256)
    )
    return np.concatenate([batch.numpy() for batch in dataset])
