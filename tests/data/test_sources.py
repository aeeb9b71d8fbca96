import itertools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmetric.data import (
    class_balanced_dataset,
    image_directory,
    pair_dataset,
    read_images,
    tfrecord_source,
    triplet_dataset,
)

# One flat colour per class, far apart, so decoded pixels identify the class.
COLOURS = {"cat": (250, 10, 10), "dog": (10, 250, 10), "owl": (10, 10, 250)}


def _write_image(path, colour, size=(5, 7)):
    image = np.zeros((*size, 3), np.uint8) + np.array(colour, np.uint8)
    encoded = tf.io.encode_png(image) if path.endswith(".png") else tf.io.encode_jpeg(image)
    tf.io.write_file(path, encoded)


def _image_tree(root, per_class=3):
    for name, colour in COLOURS.items():
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            ext = ".png" if i % 2 else ".jpg"
            _write_image(os.path.join(root, name, f"{i}{ext}"), colour)
    return root


def test_image_directory_decodes_and_resizes_in_graph(tmp_path):
    source = image_directory(_image_tree(str(tmp_path)), image_size=(4, 6))
    assert source.class_names == ["cat", "dog", "owl"]
    assert len(source) == 9
    ds = class_balanced_dataset(source, None, 2, 2, seed=0)
    assert ds.element_spec[0].shape == (4, 4, 6, 3)
    for images, labels in itertools.islice(ds, 5):
        images, labels = images.numpy(), labels.numpy()
        assert images.dtype == np.float32
        for image, label in zip(images, labels, strict=True):
            colour = COLOURS[source.class_names[label]]
            np.testing.assert_allclose(image.mean(axis=(0, 1)), colour, atol=6)  # JPEG is lossy


def test_image_directory_grayscale_pairs_and_triplets(tmp_path):
    source = image_directory(_image_tree(str(tmp_path)), image_size=(3, 3), channels=1)
    (x1, x2), same = next(iter(pair_dataset(source, batch_size=4, seed=0)))
    assert x1.shape == (4, 3, 3, 1) and x2.shape == (4, 3, 3, 1)
    (a, p, n), labels = next(iter(triplet_dataset(source, batch_size=3, seed=0)))
    assert a.shape == (3, 3, 3, 1) and labels.shape == (3, 3)


def test_image_directory_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        image_directory(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        image_directory(str(empty))
    (empty / "cat").mkdir()
    (empty / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="holds no .jpg"):
        image_directory(str(empty))
    with pytest.raises(ValueError, match="channels"):
        image_directory(_image_tree(str(tmp_path / "ok")), channels=4)


@pytest.mark.parametrize("content", [b"", b"garbage bytes", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_corrupt_image_is_named(tmp_path, content):
    root = _image_tree(str(tmp_path))
    bad = os.path.join(root, "dog", "broken.jpg")
    with open(bad, "wb") as handle:
        handle.write(content)
    with pytest.raises(ValueError, match="broken.jpg"):
        image_directory(root)


def test_unvalidated_corrupt_image_fails_naming_the_file(tmp_path):
    root = _image_tree(str(tmp_path), per_class=2)
    bad = os.path.join(root, "dog", "broken.png")
    with open(bad, "wb") as handle:
        handle.write(b"not an image at all")
    source = image_directory(root, validate=False)
    ds = class_balanced_dataset(source, None, 3, 3, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken.png"):
        next(iter(ds))


def _write_records(path, x, y):
    with tf.io.TFRecordWriter(path) as writer:
        for features, label in zip(x, y, strict=True):
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "x": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
                        "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    }
                )
            )
            writer.write(example.SerializeToString())


def _parse(serialized):
    parsed = tf.io.parse_single_example(
        serialized,
        {"x": tf.io.FixedLenFeature([2], tf.float32), "y": tf.io.FixedLenFeature([], tf.int64)},
    )
    return parsed["x"], parsed["y"]


def test_tfrecord_source(tmp_path):
    y = np.repeat(np.arange(3), 4)
    x = np.stack([np.arange(12), -np.arange(12)], 1).astype("float32")
    files = [str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")]
    _write_records(files[0], x[:5], y[:5])
    _write_records(files[1], x[5:], y[5:])
    source = tfrecord_source(files, _parse)
    np.testing.assert_array_equal(source.labels, y)
    for xb, yb in itertools.islice(class_balanced_dataset(source, None, 2, 3, seed=0), 4):
        xb, yb = xb.numpy(), yb.numpy()
        assert xb.shape == (6, 2)
        np.testing.assert_array_equal(y[xb[:, 0].astype(int)], yb)
        np.testing.assert_array_equal(xb[:, 1], -xb[:, 0])


def test_tfrecord_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        tfrecord_source([str(tmp_path / "nope.tfrecord")], _parse)
    empty = str(tmp_path / "empty.tfrecord")
    _write_records(empty, [], [])
    with pytest.raises(ValueError, match="no record"):
        tfrecord_source(empty, _parse)


def test_offline_mining_on_decoded_images(tmp_path):
    source = image_directory(_image_tree(str(tmp_path)), image_size=(3, 3))
    embedder = keras.Sequential(
        [keras.Input((3, 3, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    ds = triplet_dataset(
        source, batch_size=4, seed=0, embedder=embedder, mining="semi-hard", refresh_every=2
    )
    for (a, _, n), labels in itertools.islice(ds, 3):
        labels = labels.numpy()
        assert a.shape == (4, 3, 3, 3)
        assert np.all(labels[:, 0] == labels[:, 1]) and np.all(labels[:, 0] != labels[:, 2])
        for image, label in zip(n.numpy(), labels[:, 2], strict=True):
            colour = COLOURS[source.class_names[label]]
            np.testing.assert_allclose(image.mean(axis=(0, 1)), colour, atol=6)


def _variable_shape_dataset():
    """A TFDS-style (image, label) dataset whose images differ in size."""

    def generate():
        for i in range(6):
            yield np.zeros((i + 1, 3), np.float32), i % 2

    spec = (tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((), tf.int64))
    return tf.data.Dataset.from_generator(generate, output_signature=spec)


@pytest.mark.parametrize(
    "make",
    [
        lambda x: class_balanced_dataset(x, None, 2, 2, seed=0),
        lambda x: pair_dataset(x, None, batch_size=4, seed=0),
        lambda x: triplet_dataset(x, None, batch_size=4, seed=0),
    ],
)
def test_dataset_of_varying_shapes_or_empty_is_named(make):
    with pytest.raises(ValueError, match=r"`x` .*different shapes.*image_directory.*tfrecord"):
        make(_variable_shape_dataset())
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    )
    with pytest.raises(ValueError, match="`x` and `y` are empty"):
        make(empty)
    # Unknown cardinality (a filter), empty all the same.
    with pytest.raises(ValueError, match="`x` and `y` are empty"):
        make(_variable_shape_dataset().filter(lambda image, label: label > 5))


def test_dataset_with_unknown_but_equal_shapes_is_read():
    def generate():
        for i in range(6):
            yield np.full((2, 3), i, np.float32), i % 2

    spec = (tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((), tf.int64))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec)
    x, y = next(iter(class_balanced_dataset(dataset, None, 2, 2, seed=0)))
    assert x.shape == (4, 2, 3) and sorted(np.asarray(y).tolist()) == [0, 0, 1, 1]


def test_image_size_int_is_square_and_bad_ones_are_named(tmp_path):
    root = _image_tree(str(tmp_path / "images"))
    ds = class_balanced_dataset(image_directory(root, image_size=6), None, 2, 2, seed=0)
    assert ds.element_spec[0].shape == (4, 6, 6, 3)
    assert read_images([os.path.join(root, "cat", "0.jpg")], image_size=5).shape == (1, 5, 5, 3)
    for bad in ((6, 0), (6,), "64", 6.5, True, (6, None)):
        with pytest.raises(ValueError, match="`image_size`"):
            image_directory(root, image_size=bad)
        with pytest.raises(ValueError, match="`image_size`"):
            read_images([os.path.join(root, "cat", "0.jpg")], image_size=bad)
