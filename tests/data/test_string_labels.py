"""String labels in every loader: mapped to integer ids in sorted order, names kept."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tfmetric.data import (
    Source,
    as_source,
    class_balanced_dataset,
    encode_labels,
    tfrecord_source,
)

NAMES = np.array(["Zoe", "Ada", "Zoe", "Bob", "Ada", "Bob", "Ada", "Zoe"])
EXPECTED = np.array([2, 0, 2, 1, 0, 1, 0, 2])  # sorted: Ada, Bob, Zoe


def _check(source):
    np.testing.assert_array_equal(source.labels, EXPECTED)
    assert source.class_names == ["Ada", "Bob", "Zoe"]
    x = np.asarray(source.x)
    for xb, yb in itertools.islice(class_balanced_dataset(source, None, 2, 2, seed=0), 3):
        # x holds the sample's position: its label must be the one of that position.
        np.testing.assert_array_equal(EXPECTED[np.asarray(xb).reshape(-1).astype(int)], yb)
    return x


def test_arrays_with_string_labels():
    _check(as_source(np.arange(8, dtype="float32")[:, None], NAMES))
    _check(as_source(np.arange(8, dtype="float32")[:, None], NAMES.astype(object)))
    _check(Source(np.arange(8, dtype="float32")[:, None], [n.encode() for n in NAMES]))


def test_dataset_with_string_labels():
    dataset = tf.data.Dataset.from_tensor_slices((np.arange(8, dtype="float32")[:, None], NAMES))
    _check(as_source(dataset))


def test_tfrecords_with_string_labels(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i, name in enumerate(NAMES):
            feature = {
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=[float(i)])),
                "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())

    def parse(serialized):
        parsed = tf.io.parse_single_example(
            serialized,
            {"x": tf.io.FixedLenFeature([1], tf.float32), "name": tf.io.FixedLenFeature([], tf.string)},
        )
        return parsed["x"], parsed["name"]

    _check(tfrecord_source(path, parse))


def test_bad_labels_are_explained():
    with pytest.raises(ValueError, match="`y` must hold integer class labels"):
        encode_labels(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="a mix of"):
        encode_labels(np.array(["a", 1], dtype=object))
    with pytest.raises(ValueError, match="`class_names` must be None"):
        Source(np.zeros((2, 1)), ["a", "b"], class_names=["x", "y"])
    ids, names = encode_labels(np.array([3.0, 1.0]))
    assert ids.tolist() == [3, 1] and names is None
