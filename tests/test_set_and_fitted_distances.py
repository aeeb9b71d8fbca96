"""Jaccard (set and weighted) and data-fitted Mahalanobis distances, against scipy."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from references import numeric_gradient
from scipy.spatial import distance as scipy_distance

from tfmetric import distances
from tfmetric.index import ExactIndex
from tfmetric.losses import TripletLoss


def _binary(n, d, seed):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, d)) < 0.4).astype("float32")
    x[0] = 0.0  # an empty set
    return x


def _scipy_matrix(x, y, fn):
    return np.array([[fn(a, b) for b in y] for a in x])


def _weighted_reference(x, y):
    """`1 - Σ min / Σ max` pair by pair (0 for two zero vectors)."""
    out = np.zeros((len(x), len(y)))
    for i, a in enumerate(np.asarray(x, np.float64)):
        for j, b in enumerate(np.asarray(y, np.float64)):
            top = np.maximum(a, b).sum()
            out[i, j] = 0.0 if top == 0 else 1.0 - np.minimum(a, b).sum() / top
    return out


def test_jaccard_matches_scipy_on_sets():
    x, y = _binary(7, 9, 0), _binary(5, 9, 1)
    expected = _scipy_matrix(x.astype(bool), y.astype(bool), scipy_distance.jaccard)
    expected = np.nan_to_num(expected)  # scipy < 1.2 gave nan for two empty sets
    for weighted in (False, True):
        d = distances.Jaccard(weighted=weighted)
        np.testing.assert_allclose(d(x, y), expected, atol=1e-6)
        np.testing.assert_allclose(d.paired(x[:5], y), np.diag(expected[:5]), atol=1e-6)
    assert distances.get("jaccard")(x[:1], x[:1]).numpy().tolist() == [[0.0]]


def test_weighted_jaccard_matches_min_max_definition():
    rng = np.random.default_rng(2)
    x, y = rng.random((6, 11)).astype("float32"), rng.random((4, 11)).astype("float32")
    y[1] = 0.0
    d = distances.Jaccard(weighted=True)
    np.testing.assert_allclose(d(x, y), _weighted_reference(x, y), rtol=1e-5, atol=1e-6)
    # By hand: min = (1, 1) -> 2, max = (2, 3) -> 5, 1 - 2/5.
    np.testing.assert_allclose(d([[2.0, 1.0]], [[1.0, 3.0]]), [[0.6]], rtol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_jaccard_gradient_matches_finite_differences(weighted):
    rng = np.random.default_rng(3)
    x, y = rng.random((3, 5)) + 0.1, rng.random((4, 5)) + 0.1
    weights = rng.normal(size=(3, 4))
    xv, yv = tf.Variable(x.astype("float32")), tf.Variable(y.astype("float32"))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(distances.Jaccard(weighted)(xv, yv) * weights)
    gx, gy = tape.gradient(total, [xv, yv])

    def reference(a, b):
        if weighted:
            return _weighted_reference(a, b)
        dot = a @ b.T
        union = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - dot
        return 1.0 - dot / union

    num_x = numeric_gradient(lambda a: np.sum(reference(a, y) * weights), x)
    num_y = numeric_gradient(lambda b: np.sum(reference(x, b) * weights), y)
    np.testing.assert_allclose(gx.numpy(), num_x, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(gy.numpy(), num_y, rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(4)
    mixing = rng.normal(size=(4, 4))
    sample = rng.normal(size=(300, 4)) @ mixing
    return sample, distances.FittedMahalanobis.fit(sample, regularization=0.0)


@pytest.mark.parametrize(
    "distance",
    [distances.Jaccard(), distances.Jaccard(weighted=True), "fitted"],
)
def test_finite_gradients_with_duplicates_and_zeros_under_xla(distance, fitted):
    distance = fitted[1] if distance == "fitted" else distance
    rng = np.random.default_rng(5)
    x = rng.random((4, 4)).astype("float32")
    x = np.concatenate([x, x, np.zeros((2, 4), "float32")])

    @tf.function(jit_compile=True)
    def step(a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            total = tf.reduce_sum(distance(a)) + tf.reduce_sum(distance(a, a))
        return total, tape.gradient(total, a)

    total, grad = step(tf.constant(x))
    assert np.isfinite(total.numpy())
    assert np.all(np.isfinite(grad.numpy()))
    assert np.all(np.diag(distance(x).numpy()) == 0.0)


def test_weighted_jaccard_memory_is_blockwise(monkeypatch):
    from graph_memory import largest_tensor_elements

    monkeypatch.setattr(distances, "_BLOCK_ELEMENTS", 40 * 30)
    rng = np.random.default_rng(6)
    x, y = tf.constant(rng.random((40, 9)), "float32"), tf.constant(rng.random((30, 9)), "float32")

    def step(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            total = tf.reduce_sum(distances.Jaccard(weighted=True)(a, b))
        return tape.gradient(total, [a, b])

    assert largest_tensor_elements(step, x, y) <= 40 * 30


def test_fitted_mahalanobis_matches_scipy(fitted):
    sample, distance = fitted
    inverse = np.linalg.inv(np.cov(sample, rowvar=False))
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(5, 4)), rng.normal(size=(6, 4))
    expected = _scipy_matrix(x, y, lambda a, b: scipy_distance.mahalanobis(a, b, inverse))
    np.testing.assert_allclose(distance(x, y), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(distance.paired(x, y[:5]), np.diag(expected), rtol=1e-4)
    explicit = distances.FittedMahalanobis(inverse)
    np.testing.assert_allclose(explicit(x, y), expected, rtol=1e-4, atol=1e-4)


def test_fitted_mahalanobis_float16_input_gives_float32(fitted):
    out = fitted[1](tf.constant(np.ones((2, 4)), "float16"), tf.constant(np.zeros((3, 4)), "bfloat16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert np.all(np.isfinite(out.numpy()))


def test_singular_covariance_is_regularised_or_explained():
    rng = np.random.default_rng(8)
    base = rng.normal(size=(50, 2))
    collinear = np.concatenate([base, base[:, :1] * 2.0], axis=1)  # rank 2 in 3-D
    with pytest.raises(ValueError, match="singular.*regularization"):
        distances.FittedMahalanobis.fit(collinear, regularization=0.0)
    with pytest.raises(ValueError, match="singular"):
        distances.FittedMahalanobis.fit(rng.normal(size=(3, 8)), regularization=0.0)
    distance = distances.FittedMahalanobis.fit(collinear, regularization=1e-3)
    out = distance(collinear[:4], collinear[4:9]).numpy()
    assert np.all(np.isfinite(out)) and np.all(out > 0)
    # Regularised: the covariance plus the documented ridge, then scipy.
    cov = np.cov(collinear, rowvar=False)
    cov += 1e-3 * np.mean(np.diag(cov)) * np.eye(3)
    expected = scipy_distance.mahalanobis(collinear[0], collinear[5], np.linalg.inv(cov))
    np.testing.assert_allclose(out[0, 1], expected, rtol=1e-3)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: distances.FittedMahalanobis.fit(np.ones((1, 3))), ValueError, "`sample`"),
        (lambda: distances.FittedMahalanobis.fit([[np.nan, 1.0], [0.0, 1.0]]), ValueError, "NaN"),
        (lambda: distances.FittedMahalanobis.fit(np.ones((5, 2))), ValueError, "zero variance"),
        (lambda: distances.FittedMahalanobis.fit(np.eye(3), regularization=-1), ValueError,
         "`regularization`"),
        (lambda: distances.FittedMahalanobis([[1.0, 2.0], [0.0, 1.0]]), ValueError, "symmetric"),
        (lambda: distances.FittedMahalanobis([[1.0, 0.0], [0.0, -1.0]]), ValueError,
         "positive definite"),
        (lambda: distances.FittedMahalanobis(np.ones(3)), ValueError, "square"),
        (lambda: distances.get("mahalanobis"), ValueError, "FittedMahalanobis.fit"),
        (lambda: distances.Jaccard(weighted="yes"), TypeError, "`weighted`"),
    ],
)
def test_bad_input_is_explained(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_wrong_embedding_size_is_explained(fitted):
    with pytest.raises(ValueError, match="size 4"):
        fitted[1](np.ones((2, 3)), np.ones((2, 3)))


def test_configs_round_trip_through_get(fitted):
    for distance in (distances.Jaccard(), distances.Jaccard(weighted=True), fitted[1]):
        assert distances.get(distances.serialize(distance)) == distance
        assert distances.get(keras.saving.serialize_keras_object(distance)) == distance


def test_usable_by_losses_and_indexes(fitted):
    sample, distance = fitted
    labels = np.array([0, 0, 1, 1, 2, 2])
    embeddings = sample[:6].astype("float32")
    loss = TripletLoss(distance=distance, mining="hard")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert np.isclose(float(loss(labels, embeddings)), float(restored(labels, embeddings)))
    assert np.isfinite(float(loss(labels, embeddings)))
    for metric in (distance, distances.Jaccard(weighted=True)):
        gallery = np.abs(sample[:40]).astype("float32")
        queries = np.abs(sample[40:45]).astype("float32")
        index = ExactIndex(distance=metric, gallery_chunk_size=16)
        index.add(gallery)
        ids, found, _ = index.search(queries, k=3)
        brute = np.asarray(metric(queries, gallery))
        np.testing.assert_allclose(found, np.sort(brute, axis=1)[:, :3], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ids, np.argsort(brute, axis=1, kind="stable")[:, :3])
