"""Dataset loaders and evaluation protocols of the trainer.

A dataset spec is one of:

- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10
  classes; no download).
- `directory:PATH`: one sub-folder per class holding JPEG/PNG/BMP/GIF images.
- `tfrecord:GLOB`: TFRecord files of `tf.train.Example`s with an encoded image
  (`image` feature, bytes) and an integer class (`label` feature, int64); the
  keys are set with `image_key` / `label_key`.
- `npz:PATH`: a NumPy `.npz` archive with inputs under `x` (or `images`,
  `embeddings`, `features`) and integer classes under `y` (or `labels`).
- `tfds:NAME`: a TensorFlow Datasets image dataset such as
  `caltech_birds2011`, `cars196` or `stanford_online_products` (needs the
  `tensorflow-datasets` package, extra `tfds`). All its splits are pooled, then
  split again by the protocol.

Images are returned as uint8 arrays `(N, H, W, C)` of pixel values in
`[0, 255]`, resized to `image_size` when they differ in size; the models
rescale them inside. Vector data (an `.npz` of `(N, D)` floats) is returned as
float32.

Protocols:

- `samples`: every class is split, a `train_fraction` of its samples for
  training and the rest held out (closed-set retrieval).
- `classes`: the first `train_fraction` of the classes (sorted by label) train,
  the others are held out; the test classes are never seen in training
  (open-set retrieval, as for CUB-200, Cars-196 and Stanford Online Products).
- `pairs` and `reid`: LFW's pair verification and Market-1501's
  re-identification, split by `trainers.protocols`.
"""

import dataclasses
import glob
import os

import numpy as np

DATASET_KINDS = ("digits", "directory", "tfrecord", "npz", "tfds", "reid")
PROTOCOLS = ("samples", "classes", "pairs", "reid")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_NPZ_INPUT_KEYS = ("x", "images", "embeddings", "features")
_NPZ_LABEL_KEYS = ("y", "labels")


@dataclasses.dataclass
class Data:
    """Inputs, integer labels and class names of a dataset.

    Attributes:
        x: uint8 images `(N, H, W, C)` or float32 vectors `(N, D)`.
        y: int32 labels `(N,)` in `[0, len(class_names))`.
        class_names: The name of each label.
        name: The dataset spec it came from.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list
    name: str

    @property
    def is_image(self):
        return self.x.ndim == 4

    def subset(self, indices):
        return Data(self.x[indices], self.y[indices], self.class_names, self.name)

    def __len__(self):
        return len(self.y)


def _fail(message):
    raise ValueError(message)


def _relabel(labels, names=None):
    """Maps arbitrary labels to `0..C-1`; returns (labels, class names)."""
    values, y = np.unique(np.asarray(labels), return_inverse=True)
    if names is None:
        class_names = [str(v) for v in values]
    else:
        class_names = [str(names[int(v)]) if 0 <= int(v) < len(names) else str(v) for v in values]
    return y.astype(np.int32), class_names


def _resize_uint8(images, image_size):
    """Decoded images (a list of HxWxC uint8 arrays) -> one (N, S, S, C) uint8 array."""
    import tensorflow as tf

    channels = max(image.shape[-1] for image in images)
    out = []
    for image in images:
        if image.shape[-1] != channels:
            image = np.repeat(image, channels, axis=-1)
        if image.shape[:2] != (image_size, image_size):
            image = tf.image.resize(image, (image_size, image_size), antialias=True).numpy()
            image = np.clip(np.round(image), 0, 255)
        out.append(image.astype(np.uint8))
    return np.stack(out)


def load_digits():
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    # Pixel values 0..16 spread to 0..255 so that every image source has the same range.
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Data(x, digits.target.astype(np.int32), [str(n) for n in digits.target_names], "digits")


def load_directory(path, image_size):
    from PIL import Image

    if not os.path.isdir(path):
        _fail(f"`--dataset=directory:{path}`: no such directory.")
    classes = sorted(
        d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith(".")
    )
    if not classes:
        _fail(f"`--dataset=directory:{path}` holds no class sub-folders.")
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        for file in sorted(os.listdir(folder)):
            if not file.lower().endswith(IMAGE_EXTENSIONS):
                continue
            file_path = os.path.join(folder, file)
            try:
                with Image.open(file_path) as image:
                    image = image.convert("L" if image.mode in ("1", "L", "I;16") else "RGB")
                    array = np.asarray(image)
            except OSError as error:
                _fail(f"`--dataset=directory:{path}`: cannot read image {file_path}: {error}")
            images.append(array[..., None] if array.ndim == 2 else array)
            labels.append(label)
    if not images:
        _fail(f"`--dataset=directory:{path}`: the class sub-folders hold no images {IMAGE_EXTENSIONS}.")
    y, class_names = _relabel(labels, classes)
    return Data(_resize_uint8(images, image_size), y, class_names, f"directory:{path}")


def load_tfrecord(pattern, image_size, image_key="image", label_key="label"):
    import tensorflow as tf

    files = sorted(glob.glob(pattern))
    if not files:
        _fail(f"`--dataset=tfrecord:{pattern}` matches no files.")
    spec = {
        image_key: tf.io.FixedLenFeature([], tf.string),
        label_key: tf.io.FixedLenFeature([], tf.int64),
    }
    images, labels = [], []
    for file in files:
        try:
            for record in tf.data.TFRecordDataset(file):
                example = tf.io.parse_single_example(record, spec)
                image = tf.io.decode_image(example[image_key], expand_animations=False)
                images.append(image.numpy())
                labels.append(int(example[label_key]))
        except tf.errors.DataLossError as error:
            _fail(
                f"`--dataset=tfrecord:{pattern}`: the file {file!r} is truncated or corrupt: "
                f"{error.message}"
            )
        except tf.errors.InvalidArgumentError as error:
            _fail(
                f"`--dataset=tfrecord:{pattern}`: cannot parse the records of {file!r} as "
                f"Examples with an encoded image `{image_key}` and an int64 `{label_key}`: "
                f"{error.message}"
            )
    if not images:
        _fail(f"`--dataset=tfrecord:{pattern}`: the files hold no records.")
    y, class_names = _relabel(labels)
    return Data(_resize_uint8(images, image_size), y, class_names, f"tfrecord:{pattern}")


def load_npz(path):
    from tfmetric._src import files

    if not os.path.isfile(path):
        _fail(f"`--dataset=npz:{path}`: no such file.")
    archive = files.read_npz(path, f"--dataset=npz:{path}")
    keys = list(archive)
    x_key = next((k for k in _NPZ_INPUT_KEYS if k in keys), None)
    y_key = next((k for k in _NPZ_LABEL_KEYS if k in keys), None)
    if x_key is None or y_key is None:
        _fail(
            f"`--dataset=npz:{path}` must hold inputs under one of {list(_NPZ_INPUT_KEYS)} "
            f"and labels under one of {list(_NPZ_LABEL_KEYS)}; found keys {keys}."
        )
    x, labels = archive[x_key], archive[y_key]
    names = archive["class_names"].tolist() if "class_names" in keys else None
    if len(x) != len(labels):
        _fail(f"`--dataset=npz:{path}`: {len(x)} inputs but {len(labels)} labels.")
    if len(x) == 0:
        _fail(f"`--dataset=npz:{path}` is empty.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        _fail(f"`--dataset=npz:{path}`: labels must be 1-D integers; got {labels.dtype}{labels.shape}.")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim == 4:
        if x.dtype != np.uint8:
            if np.nanmax(x) <= 1.0:
                x = x * 255.0
            x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    elif x.ndim == 2:
        x = x.astype(np.float32)
    else:
        _fail(f"`--dataset=npz:{path}`: inputs must be (N, D) vectors or (N, H, W[, C]) images.")
    if not np.all(np.isfinite(x.astype(np.float32))):
        _fail(f"`--dataset=npz:{path}`: inputs hold NaN or Inf.")
    y, class_names = _relabel(labels, names)
    return Data(x, y, class_names, f"npz:{path}")


def load_tfds(name, image_size, split="all", data_dir=None):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        _fail(
            f"`--dataset=tfds:{name}` needs TensorFlow Datasets: "
            "`pip install tensorflow-datasets` (extra `tfds`)."
        )
    if name not in tfds.list_builders():
        _fail(f"`--dataset=tfds:{name}`: unknown TFDS dataset (see `tfds.list_builders()`).")
    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    image_key = next((k for k in ("image",) if k in features), None)
    image_key = image_key or next(
        (k for k, f in features.items() if isinstance(f, tfds.features.Image)), None
    )
    label_key = next((k for k in ("label", "class_id") if k in features), None)
    label_key = label_key or next(
        (k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)), None
    )
    if image_key is None or label_key is None:
        _fail(f"`--dataset=tfds:{name}` has no image feature and class label; features: {features}.")
    if split == "all":
        split = "+".join(builder.info.splits.keys()) if builder.info.splits else "train+test"
    builder.download_and_prepare()
    ds = builder.as_dataset(split=split)
    images, labels = [], []
    for example in ds.as_numpy_iterator():
        images.append(example[image_key])
        label = example[label_key]
        # String identities (LFW's `label` is text) are numbered by `_relabel`.
        labels.append(label.decode() if isinstance(label, bytes) else int(label))
    if not images:
        _fail(f"`--dataset=tfds:{name}` split {split!r} is empty.")
    names = getattr(features[label_key], "names", None)
    y, class_names = _relabel(labels, names)
    return Data(_resize_uint8(images, image_size), y, class_names, f"tfds:{name}")


def check_spec(spec):
    """Checks the form of a dataset spec (not its files); returns `(kind, argument)`.

    Raises:
        ValueError: for an unknown kind (listing the valid ones) or a missing
            or extra argument.
    """
    if not isinstance(spec, str) or not spec:
        _fail(f"`--dataset` must be one of {list(DATASET_KINDS)} (with `:ARG`); got {spec!r}.")
    kind, _, argument = spec.partition(":")
    if kind not in DATASET_KINDS:
        _fail(
            f"Unknown `--dataset` {spec!r}; expected `digits`, `directory:PATH`, "
            f"`tfrecord:GLOB`, `npz:PATH`, `tfds:NAME` or `reid:ROOT`."
        )
    if kind == "digits" and argument:
        _fail(f"`--dataset=digits` takes no argument; got {spec!r}.")
    if kind != "digits" and not argument:
        _fail(f"`--dataset={kind}` needs an argument: `{kind}:...`.")
    return kind, argument


def load(spec, image_size=64, tfrecord_image_key="image", tfrecord_label_key="label", tfds_split="all",
         tfds_data_dir=None):
    """Loads a dataset from its spec (see the module docstring).

    Raises:
        ValueError: for an unknown kind (listing the valid ones), a missing
            path, an unreadable file or an empty dataset.
    """
    kind, argument = check_spec(spec)
    if kind == "digits":
        data = load_digits()
    elif kind == "directory":
        data = load_directory(argument, image_size)
    elif kind == "tfrecord":
        data = load_tfrecord(argument, image_size, tfrecord_image_key, tfrecord_label_key)
    elif kind == "npz":
        data = load_npz(argument)
    elif kind == "reid":
        _fail(f"`--dataset={spec}` is read by `--protocol=reid` (trainers.protocols).")
    else:
        data = load_tfds(argument, image_size, tfds_split, tfds_data_dir)
    if len(class_names := data.class_names) < 2:
        _fail(f"`--dataset={spec}` needs at least 2 classes; got {len(class_names)}.")
    return data


def split(data, protocol="samples", train_fraction=0.7, seed=0):
    """Splits a dataset into (train, test) by the protocol.

    Args:
        data: A `Data`.
        protocol: `"samples"` (split within each class) or `"classes"` (held-out
            classes).
        train_fraction: Fraction of each class's samples (`samples`) or of the
            classes (`classes`) used for training.
        seed: Seed of the per-class shuffle (`samples`).

    Returns:
        `(train, test)` `Data`s.

    Raises:
        ValueError: for an unknown protocol, a fraction outside (0, 1), or a
            split leaving fewer than 2 classes with 2 samples on either side.
    """
    if protocol not in PROTOCOLS:
        _fail(f"`--protocol` must be one of {list(PROTOCOLS)}; got {protocol!r}.")
    if protocol in ("pairs", "reid"):
        _fail(f"`--protocol={protocol}` splits with trainers.protocols.load_and_split.")
    if not 0.0 < train_fraction < 1.0:
        _fail(f"`--train_fraction` must be in (0, 1); got {train_fraction}.")
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    classes = np.unique(data.y)
    if protocol == "samples":
        for c in classes:
            members = rng.permutation(np.flatnonzero(data.y == c))
            n_train = int(round(train_fraction * len(members)))
            if len(members) >= 2:
                n_train = min(max(n_train, 1), len(members) - 1)
            train_idx.extend(members[:n_train])
            test_idx.extend(members[n_train:])
    else:
        n_train = min(max(int(round(train_fraction * len(classes))), 1), len(classes) - 1)
        train_classes = classes[:n_train]
        in_train = np.isin(data.y, train_classes)
        train_idx, test_idx = np.flatnonzero(in_train), np.flatnonzero(~in_train)
    train, test = data.subset(np.sort(train_idx)), data.subset(np.sort(test_idx))
    for part, subset in (("training", train), ("held-out", test)):
        counts = np.bincount(subset.y, minlength=len(data.class_names))
        if np.sum(counts >= 2) < 2:
            _fail(
                f"The {part} split of `--dataset={data.name}` (`--protocol={protocol}`) has fewer "
                "than 2 classes with at least 2 samples; nothing to train or evaluate on."
            )
    return train, test
