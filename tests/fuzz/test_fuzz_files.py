"""Fuzz: `tfmetric.data` loaders on damaged files, and the samplers with bad arguments.

The contract: a `ValueError` / `TypeError` naming the file or the argument, or
a correct result. Damaged files are made here from valid ones (truncated,
a flipped byte, garbage, empty).
"""

import io
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from fuzz_strategies import assert_names
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tfmetric import data

_SIZE = (8, 8)


def _jpeg(seed, size=(12, 10)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png(seed):
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6), seed % 256, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _damage(content, how, position):
    if how == "truncate":
        return content[: max(1, position % len(content))]
    if how == "empty":
        return b""
    if how == "garbage":
        return os.urandom(64)
    if how == "magic_only":  # a JPEG header, nothing after it
        return content[:4]
    return b"GIF89a" + content[6:]  # a wrong (unsupported here) format


_DAMAGE = st.sampled_from(["truncate", "empty", "garbage", "magic_only", "other_format"])


def _folder(root, damaged=None):
    for label, name in enumerate(["cat", "dog"]):
        os.makedirs(root / name, exist_ok=True)
        for i in range(3):
            (root / name / f"{i}.jpg").write_bytes(_jpeg(10 * label + i))
        (root / name / "extra.png").write_bytes(_png(label))
    if damaged is not None:
        (root / "dog" / "bad.jpg").write_bytes(damaged)
        return str(root / "dog" / "bad.jpg")
    return None


@given(how=_DAMAGE, position=st.integers(1, 10_000))
def test_image_folder_with_a_damaged_file_names_it(tmp_path_factory, how, position):
    root = tmp_path_factory.mktemp("images")
    bad = _folder(root, _damage(_jpeg(99), how, position))
    with pytest.raises(ValueError) as error:
        data.image_directory(root, _SIZE)
    assert bad in str(error.value), error.value
    with pytest.raises(ValueError) as error:
        data.read_images([root / "cat" / "0.jpg", bad], _SIZE)
    assert bad in str(error.value), error.value


def test_image_folder_reads_valid_images_like_pil(tmp_path):
    _folder(tmp_path)
    source = data.image_directory(tmp_path, _SIZE)
    assert source.class_names == ["cat", "dog"]
    assert source.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    images = data.read_images(source.x.numpy().astype(str), _SIZE)
    assert images.shape == (8, *_SIZE, 3) and images.dtype == np.float32
    # PNG 5 ("cat/extra.png", value 0) decodes to a constant image.
    np.testing.assert_allclose(images[3], 0.0)
    np.testing.assert_allclose(data.read_images([tmp_path / "dog" / "extra.png"], _SIZE), 1.0)


def test_unvalidated_folder_names_a_non_image_file_when_it_is_read(tmp_path):
    bad = _folder(tmp_path, b"not an image at all")
    source = data.image_directory(tmp_path, _SIZE, validate=False)  # no file read here
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad.jpg"):
        source.gather(tf.range(len(source)))
    assert bad.endswith("bad.jpg")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"channels": 2}, "channels"),
        ({"image_size": (0, 8)}, "image_size"),
        ({"image_size": (8,)}, "image_size"),
    ],
)
def test_image_folder_arguments(tmp_path, kwargs, name):
    _folder(tmp_path)
    with pytest.raises(ValueError) as error:
        data.image_directory(tmp_path, **{"image_size": _SIZE, **kwargs})
    assert_names(error.value, name)


def test_image_folder_structure_errors_name_the_folder(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        data.image_directory(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.image_directory(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="empty_class"):
        data.image_directory(tmp_path)
    with pytest.raises(ValueError, match="nowhere.jpg"):
        data.read_images([tmp_path / "nowhere.jpg"])


def _example(image, label):
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


_SPEC = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def _parse(serialized):
    example = tf.io.parse_single_example(serialized, _SPEC)
    image = tf.io.decode_jpeg(example["image"], channels=3)
    return tf.image.resize(image, _SIZE), example["label"]


@pytest.fixture(scope="module")
def tfrecord(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "good.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(6):
            writer.write(_example(_jpeg(i), i % 2))
    return str(path), path.read_bytes()


@given(how=st.sampled_from(["truncate", "flip", "garbage", "not_example"]),
       position=st.integers(0, 10_000))  # fmt: skip
def test_damaged_tfrecord_names_the_file(tfrecord, tmp_path_factory, how, position):
    good, content = tfrecord
    bad = tmp_path_factory.mktemp("damaged") / "bad.tfrecord"
    if how == "truncate":
        damaged = content[: position % (len(content) - 1) + 1]
    elif how == "flip":
        damaged = bytearray(content)
        damaged[position % len(content)] ^= 0xFF
        damaged = bytes(damaged)
    elif how == "garbage":
        damaged = os.urandom(40)
    else:
        with tf.io.TFRecordWriter(str(bad)) as writer:
            writer.write(b"not an Example")
        damaged = bad.read_bytes()
    bad.write_bytes(damaged)
    try:
        source = data.tfrecord_source([good, str(bad)], _parse)
    except ValueError as error:
        assert str(bad) in str(error), error
        assert "function_node" not in str(error)
        return
    # A flipped byte inside the image of a record whose CRC is not checked on read: the
    # records still parse, with their labels.
    assert len(source) == 12
    assert sorted(source.labels.tolist()) == [0] * 6 + [1] * 6


def test_tfrecord_source_reads_the_records(tfrecord):
    good, _ = tfrecord
    source = data.tfrecord_source(good, _parse)
    assert source.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert source.gather(tf.constant([0, 5])).shape == (2, *_SIZE, 3)
    with pytest.raises(ValueError, match="not found"):
        data.tfrecord_source([good, good + ".missing"], _parse)
    with pytest.raises(ValueError, match="empty"):
        data.tfrecord_source([], _parse)


@given(how=_DAMAGE, position=st.integers(1, 10_000))
def test_reid_folder_with_a_damaged_file_names_it(tmp_path_factory, how, position):
    root = tmp_path_factory.mktemp("reid")
    for name in ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "0007_c2s1_000001_00.jpg"]:
        (root / name).write_bytes(_jpeg(len(name)))
    bad = root / "0007_c1s1_000002_00.jpg"
    bad.write_bytes(_damage(_jpeg(5), how, position))
    with pytest.raises(ValueError) as error:
        data.reid_folder(root, _SIZE)
    assert str(bad) in str(error.value)


# Samplers with bad arguments: errors name the argument.

_X = np.random.default_rng(0).normal(size=(24, 3)).astype("float32")
_Y = np.repeat(np.arange(6), 4)

_SAMPLER_CASES = [
    ("class_balanced", {"classes_per_batch": 0}, "classes_per_batch"),
    ("class_balanced", {"classes_per_batch": 7}, "classes_per_batch"),
    ("class_balanced", {"classes_per_batch": 2.5}, "classes_per_batch"),
    ("class_balanced", {"samples_per_class": 1}, "samples_per_class"),
    ("class_balanced", {"samples_per_class": True}, "samples_per_class"),
    ("class_balanced", {"seed": "x"}, "seed"),
    ("class_balanced", {"augment": 3}, "augment"),
    ("pair", {"batch_size": 0}, "batch_size"),
    ("pair", {"positive_fraction": 1.5}, "positive_fraction"),
    ("pair", {"positive_fraction": math.nan}, "positive_fraction"),
    ("pair", {"mining": "sideways"}, "mining"),
    ("pair", {"refresh_every": 0}, "refresh_every"),
    ("pair", {"distance": "nope"}, "distance"),
    ("triplet", {"batch_size": -4}, "batch_size"),
    ("triplet", {"mining": "medium"}, "mining"),
    ("triplet", {"pool_size": 1}, "pool_size"),
    ("multi_view", {"batch_size": 0}, "batch_size"),
    ("multi_view", {"views": 1}, "views"),
    ("multi_view", {"augment": None}, "augment"),
]


def _sampler(kind, kwargs):
    if kind == "class_balanced":
        return data.class_balanced_dataset(_X, _Y, **{"classes_per_batch": 2, **kwargs})
    if kind == "pair":
        return data.pair_dataset(_X, _Y, **{"batch_size": 4, **kwargs})
    if kind == "triplet":
        return data.triplet_dataset(_X, _Y, **{"batch_size": 4, **kwargs})
    return data.multi_view_dataset(_X, **{"batch_size": 4, "augment": lambda v: v, **kwargs})


@pytest.mark.parametrize("kind, kwargs, name", _SAMPLER_CASES)
def test_sampler_bad_arguments_name_the_argument(kind, kwargs, name):
    with pytest.raises((ValueError, TypeError)) as error:
        _sampler(kind, kwargs)
    message = str(error.value)
    assert name in message or repr(kwargs[name]) in message, message


@given(
    labels=st.sampled_from(
        [
            np.zeros(24, int),  # one class
            np.full(24, math.nan),
            np.repeat(np.arange(6), 4)[:-1],  # one label short
            np.repeat(np.arange(6), 4).reshape(6, 4),
        ]
    ),
    kind=st.sampled_from(["class_balanced", "pair", "triplet"]),
)
def test_sampler_unusable_labels(labels, kind):
    with pytest.raises((ValueError, TypeError)) as error:
        _build(kind, labels)
    assert_names(error.value, "y", "labels", "classes_per_batch", "x")


def _build(kind, labels):
    if kind == "class_balanced":
        return data.class_balanced_dataset(_X, labels, classes_per_batch=2, samples_per_class=2)
    if kind == "pair":
        return data.pair_dataset(_X, labels, batch_size=4)
    return data.triplet_dataset(_X, labels, batch_size=4)


def test_class_balanced_batches_are_balanced():
    dataset = data.class_balanced_dataset(_X, _Y, classes_per_batch=3, samples_per_class=2, seed=1)
    for x, y in dataset.take(3):
        counts = np.unique(y.numpy(), return_counts=True)[1]
        assert counts.tolist() == [2, 2, 2]
        rows = [int(np.flatnonzero((_X == row).all(axis=1))[0]) for row in x.numpy()]
        np.testing.assert_array_equal(_Y[rows], y.numpy())


@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)))
def test_pairs_file_of_any_content_is_read_or_named(tmp_path_factory, content):
    from tfmetric.metrics import read_pairs_file

    folder = tmp_path_factory.mktemp("pairs")
    path = folder / "pairs.txt"
    path.write_bytes(content)
    try:
        pairs = read_pairs_file(path, folder, check_images=False)
    except ValueError as error:
        assert str(path) in str(error), error
        return
    assert len(pairs.same) > 0  # only a well-formed file is read
