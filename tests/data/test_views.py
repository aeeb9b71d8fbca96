"""Two-view (SimCLR) batches: layout, seeding, augmentations and bad input."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmetric

X = np.random.default_rng(0).random((10, 6, 6, 1)).astype("float32")


def _shift_and_noise(sample, seed):
    return sample + tf.random.stateless_normal(tf.shape(sample), seed)


def _batches(dataset, count):
    return [(xb.numpy(), yb.numpy()) for xb, yb in itertools.islice(dataset, count)]


def test_views_are_laid_out_view_by_view_with_sample_ids_as_labels():
    batches = _batches(tfmetric.data.multi_view_dataset(X, 4, _shift_and_noise, seed=1), 5)
    seen = []
    for xb, yb in batches:
        assert xb.shape == (8, 6, 6, 1) and yb.dtype == np.int64
        np.testing.assert_array_equal(yb[:4], yb[4:])
        assert len(set(yb[:4].tolist())) == 4 or len(seen) >= 8  # distinct within an epoch
        seen.extend(yb[:4].tolist())
    # The first 2 batches (8 of 10 samples) are a permutation prefix of one epoch.
    assert len(set(seen[:8])) == 8 and set(seen) <= set(range(10))


def test_each_view_is_augment_of_the_sample_with_its_documented_seed():
    seed, views, batch_size = 7, 3, 4
    batches = _batches(
        tfmetric.data.multi_view_dataset(X, batch_size, _shift_and_noise, views=views, seed=seed),
        3,
    )
    for k, (xb, yb) in enumerate(batches):
        for v in range(views):
            for i in range(batch_size):
                position = k * batch_size + i
                expected = _shift_and_noise(X[yb[i]], tf.constant([seed, position * views + v]))
                np.testing.assert_allclose(xb[v * batch_size + i], expected.numpy(), atol=1e-6)
    # Views of one sample differ (independent draws).
    assert not np.allclose(batches[0][0][:4], batches[0][0][4:8])


def test_same_seed_same_batches_other_seed_other_batches():
    def make(seed):
        return _batches(tfmetric.data.multi_view_dataset(X, 4, _shift_and_noise, seed=seed), 3)

    first, again, other = make(3), make(3), make(4)
    for (xa, ya), (xb, yb) in zip(first, again, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_class_labels_and_batch_level_keras_layer():
    y = np.arange(10) % 3
    layer = keras.layers.RandomTranslation(0.2, 0.2, seed=0)
    xb, yb = next(iter(tfmetric.data.multi_view_dataset(X, 5, layer, y=y, seed=0)))
    assert xb.shape == (10, 6, 6, 1)
    np.testing.assert_array_equal(yb[:5], yb[5:])
    assert set(yb.numpy().tolist()) <= {0, 1, 2}


def test_ntxent_trains_on_two_views_without_labels():
    keras.utils.set_random_seed(0)
    dataset = tfmetric.data.multi_view_dataset(X, 4, _shift_and_noise, seed=0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    model.compile(
        optimizer="adam", loss=tfmetric.losses.NTXentLoss(temperature=0.5), jit_compile=True
    )
    history = model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_bad_input_is_named():
    shapes = iter([(6, 6, 1), (5, 5, 1)])

    def different_views(sample, seed):
        shape = next(shapes, (5, 5, 1))
        return tf.image.resize(sample, shape[:2])

    with pytest.raises(ValueError, match="views of one shape"):
        tfmetric.data.multi_view_dataset(X, 4, different_views, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        tfmetric.data.multi_view_dataset(X, 11, _shift_and_noise)
    with pytest.raises(ValueError, match="views"):
        tfmetric.data.multi_view_dataset(X, 4, _shift_and_noise, views=1)
    with pytest.raises(TypeError, match="augment"):
        tfmetric.data.multi_view_dataset(X, 4, None)
    with pytest.raises(ValueError, match="`y`"):
        tfmetric.data.multi_view_dataset(X, 4, _shift_and_noise, y=np.zeros(9, "int64"))
    with pytest.raises(ValueError, match="`y`"):
        tfmetric.data.multi_view_dataset(X, 4, _shift_and_noise, y=np.full(10, 0.5, "float32"))
    with pytest.raises(ValueError, match=r"`y` has 9 labels but `x` has 10 rows"):
        tfmetric.data.multi_view_dataset(X, 4, _shift_and_noise, y=np.zeros(9, "int64"))
    with pytest.raises(ValueError, match="max_shift"):
        tfmetric.data.image_augmentation(max_shift=1.5)
    with pytest.raises(ValueError, match="noise_stddev"):
        tfmetric.data.image_augmentation(noise_stddev=-1.0)
    with pytest.raises(ValueError, match="image"):
        tfmetric.data.image_augmentation()(np.zeros((4, 4), "float32"), np.array([0, 0]))


def test_image_augmentation_shift_is_a_crop_of_the_reflect_padded_image():
    image = np.arange(36, dtype="float32").reshape(6, 6, 1)
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    crops = {
        padded[r : r + 6, c : c + 6].tobytes() for r in range(3) for c in range(3)
    }
    augment = tfmetric.data.image_augmentation(max_shift=1 / 6)
    outputs = {augment(image, np.array([s, 1], "int32")).numpy().tobytes() for s in range(40)}
    assert outputs <= crops and len(outputs) > 3
    identity = tfmetric.data.image_augmentation(max_shift=0.0)
    np.testing.assert_array_equal(identity(image, np.array([0, 1], "int32")), image)


def test_image_augmentation_cutout_zeroes_one_square():
    image = np.ones((8, 8, 1), "float32")
    out = tfmetric.data.image_augmentation(max_shift=0.0, cutout=0.25)(
        image, np.array([3, 4], "int32")
    )
    zero = out.numpy()[:, :, 0] == 0
    rows, cols = np.nonzero(zero)
    assert zero.sum() == 4 and np.ptp(rows) == 1 and np.ptp(cols) == 1


@pytest.mark.parametrize(
    "x, error, match",
    [
        (tf.data.Dataset.from_tensor_slices(np.zeros((4, 2), "float32")), TypeError, "got _Tensor"),
        ({"image": np.zeros((4, 2), "float32")}, TypeError, "got dict"),
        (3.0, TypeError, "got float"),
        (np.float32(3.0), ValueError, "sample axis"),
        ([[1.0, 2.0], [3.0]], ValueError, "of one shape"),
        (np.array([None, None, None]), ValueError, "got dtype object"),
    ],
)
def test_bad_samples_are_named(x, error, match):
    with pytest.raises(error, match=r"`x` must .*" + match):
        tfmetric.data.multi_view_dataset(x, 1, lambda batch: batch, seed=0)


def test_string_samples_are_kept():
    paths = np.array(["a.png", "b.png", "c.png"])
    xb, yb = next(iter(tfmetric.data.multi_view_dataset(paths, 3, lambda batch: batch, seed=0)))
    assert sorted(xb.numpy()[:3].tolist()) == [b"a.png", b"b.png", b"c.png"]
    np.testing.assert_array_equal(xb.numpy()[:3], xb.numpy()[3:])
    np.testing.assert_array_equal(paths[yb.numpy()[:3]].astype(bytes), xb.numpy()[:3])
