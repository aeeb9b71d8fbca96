"""Dataset loaders and protocols of the trainer."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainers import datasets


def _write_images(root, per_class, size=(10, 12), mode="RGB"):
    rng = np.random.default_rng(0)
    for name, count in per_class.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            shape = size[::-1] + ((3,) if mode == "RGB" else ())
            array = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(array, mode=mode).save(os.path.join(root, name, f"{i}.png"))


def test_digits_are_uint8_pixels_in_0_255():
    data = datasets.load("digits")
    assert data.x.shape == (1797, 8, 8, 1) and data.x.dtype == np.uint8
    assert data.x.max() == 255 and data.x.min() == 0
    assert data.class_names == [str(i) for i in range(10)]
    assert np.bincount(data.y).min() > 170


def test_samples_protocol_splits_each_class_70_30():
    data = datasets.load("digits")
    train, test = datasets.split(data, "samples", 0.7, seed=0)
    assert len(train) + len(test) == len(data)
    for c in range(10):
        n = np.sum(data.y == c)
        assert np.sum(train.y == c) == round(0.7 * n)
    # Disjoint samples: no test image equals a training image at the same index set.
    assert set(np.unique(train.y)) == set(np.unique(test.y)) == set(range(10))
    again = datasets.split(data, "samples", 0.7, seed=0)[0]
    np.testing.assert_array_equal(again.x, train.x)


def test_classes_protocol_holds_out_unseen_classes():
    data = datasets.load("digits")
    train, test = datasets.split(data, "classes", 0.5)
    assert set(np.unique(train.y)) == {0, 1, 2, 3, 4}
    assert set(np.unique(test.y)) == {5, 6, 7, 8, 9}
    assert len(train) + len(test) == len(data)


def test_directory_loader_resizes_and_names_classes(tmp_path):
    _write_images(tmp_path, {"cat": 3, "dog": 2})
    _write_images(tmp_path / "gray", {}, mode="L")
    os.makedirs(tmp_path / "empty_class")
    data = datasets.load(f"directory:{tmp_path}", image_size=16)
    assert data.x.shape == (5, 16, 16, 3) and data.x.dtype == np.uint8
    assert data.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(data.y, [0, 0, 0, 1, 1])


def test_directory_loader_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        datasets.load(f"directory:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="no class sub-folders"):
        datasets.load(f"directory:{tmp_path}")
    os.makedirs(tmp_path / "a")
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="hold no images"):
        datasets.load(f"directory:{tmp_path}")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        datasets.load(f"directory:{tmp_path}")


def test_npz_loader(tmp_path):
    path = tmp_path / "d.npz"
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    np.savez(path, x=x, y=np.array([3, 3, 7, 7, 9, 9]))
    data = datasets.load(f"npz:{path}")
    np.testing.assert_allclose(data.x, x)
    np.testing.assert_array_equal(data.y, [0, 0, 1, 1, 2, 2])
    assert data.class_names == ["3", "7", "9"] and not data.is_image
    images = tmp_path / "i.npz"
    np.savez(images, images=np.ones((4, 5, 5)) * 0.5, labels=np.array([0, 1, 0, 1]))
    data = datasets.load(f"npz:{images}")
    assert data.x.shape == (4, 5, 5, 1) and data.x.dtype == np.uint8 and data.x.max() == 128


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"a": np.ones(3), "y": np.ones(3, int)}, "must hold inputs"),
        ({"x": np.ones((0, 3)), "y": np.ones(0, int)}, "is empty"),
        ({"x": np.ones((3, 3)), "y": np.ones(2, int)}, "3 inputs but 2 labels"),
        ({"x": np.ones((3, 3)), "y": np.ones(3)}, "labels must be 1-D integers"),
        ({"x": np.full((2, 3), np.nan), "y": np.ones(2, int)}, "NaN"),
    ],
)
def test_npz_loader_bad_files(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match):
        datasets.load(f"npz:{path}")


def test_npz_missing_file_and_single_class(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        datasets.load(f"npz:{tmp_path / 'missing.npz'}")
    path = tmp_path / "one.npz"
    np.savez(path, x=np.ones((4, 2)), y=np.zeros(4, int))
    with pytest.raises(ValueError, match="at least 2 classes"):
        datasets.load(f"npz:{path}")


def test_tfrecord_loader(tmp_path):
    rng = np.random.default_rng(0)
    for shard in range(2):
        with tf.io.TFRecordWriter(str(tmp_path / f"part-{shard}.tfrecord")) as writer:
            for label in (1, 5, 5):
                image = tf.io.encode_png(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).numpy()
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                        }
                    )
                )
                writer.write(example.SerializeToString())
    data = datasets.load(f"tfrecord:{tmp_path}/part-*.tfrecord", image_size=8)
    assert data.x.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(np.bincount(data.y), [2, 4])
    assert data.class_names == ["1", "5"]
    with pytest.raises(ValueError, match="matches no files"):
        datasets.load(f"tfrecord:{tmp_path}/nothing-*")
    with pytest.raises(ValueError, match="cannot parse"):
        datasets.load(f"tfrecord:{tmp_path}/part-*.tfrecord", tfrecord_label_key="class")


def test_tfds_loader_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        data = datasets.load("tfds:mnist", image_size=28)
    # mock_data generates `num_examples` random examples per `as_dataset` call.
    assert data.x.shape[1:] == (28, 28, 1) and data.x.dtype == np.uint8
    assert len(data) == 40
    assert data.name == "tfds:mnist"
    assert set(data.class_names) <= {str(i) for i in range(10)}


def test_tfds_unknown_name():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="unknown TFDS dataset"):
        datasets.load("tfds:no_such_dataset_xyz")


def test_unknown_dataset_lists_the_valid_kinds():
    with pytest.raises(ValueError, match="digits.*directory:PATH.*tfrecord:GLOB.*npz:PATH.*tfds:NAME"):
        datasets.load("mnist")
    with pytest.raises(ValueError, match="needs an argument"):
        datasets.load("npz")


def test_bad_protocol_and_fraction():
    data = datasets.load("digits")
    with pytest.raises(ValueError, match="--protocol"):
        datasets.split(data, "pairs")
    with pytest.raises(ValueError, match="--train_fraction"):
        datasets.split(data, "samples", 1.0)


def test_tfds_loader_with_string_labels():
    # LFW's `label` is text (a person's name): names are numbered, not cast with int().
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        data = datasets.load("tfds:lfw", image_size=16)
    assert data.x.shape == (12, 16, 16, 3)
    assert all(isinstance(name, str) for name in data.class_names)
    assert sorted(data.class_names) == data.class_names
    assert data.y.min() >= 0 and data.y.max() == len(data.class_names) - 1
