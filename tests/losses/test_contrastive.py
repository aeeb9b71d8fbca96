import inspect

import backend_ops
import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_memory import largest_tensor_elements
from references import contrastive, numeric_gradient

from tfmetric.losses import ContrastiveLoss, contrastive_loss

DISTANCES = ["euclidean", "squared_euclidean", "cosine", "inner_product", "manhattan"]


def _batch(n=10, d=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    return labels, (0.5 * rng.normal(size=(n, d))).astype("float32")


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("margin", [0.0, 0.5, 2.0])
def test_matches_reference(distance, margin):
    labels, x = _batch(seed=int(margin * 4))
    values = contrastive_loss(labels, x, margin=margin, distance=distance)
    got = float(np.mean(keras.ops.convert_to_numpy(values)))
    np.testing.assert_allclose(got, contrastive(labels, x, margin, distance), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        float(ContrastiveLoss(margin=margin, distance=distance)(labels, x)),
        contrastive(labels, x, margin, distance),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "inner_product"])
def test_gradient_matches_finite_differences(distance):
    labels, x = _batch(n=6, seed=3)
    grad = backend_ops.grad(
        lambda e: keras.ops.mean(contrastive_loss(labels, e, margin=1.0, distance=distance)), x
    )
    numeric = numeric_gradient(lambda e: contrastive(labels, e, 1.0, distance), x.astype(np.float64))
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("labels", [np.arange(5), np.zeros(5, "int32")])
@pytest.mark.parametrize("distance", DISTANCES)
def test_degenerate_batches_and_duplicates_are_finite(labels, distance):
    for x in (np.zeros((5, 2)), np.ones((5, 2))):
        loss, grad = backend_ops.value_and_grad(
            lambda e: ContrastiveLoss(distance=distance)(labels, e), x.astype("float32")
        )
        assert np.isfinite(float(loss))
        assert np.all(np.isfinite(grad))


def test_batch_without_positives_keeps_its_negative_pair_costs():
    # As the README says: unlike the other in-batch losses, not 0 on such a batch.
    labels = np.arange(4)
    x = np.array([[0.0, 0.0], [0.0, 0.5], [0.0, 0.75], [3.0, 0.0]], "float32")
    value = float(ContrastiveLoss()(labels, x))
    expected = contrastive(labels, x.astype("float64"))  # (1 - d)² over the pairs closer than 1
    assert expected > 0
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_single_sample_batch_is_zero():
    assert float(ContrastiveLoss()(np.array([3]), np.ones((1, 4), "float32"))) == 0.0


def test_float16_embeddings():
    labels, x = _batch()
    loss = ContrastiveLoss()(labels, keras.ops.cast(x, "float16"))
    expected = contrastive(labels, x.astype("float16").astype("float32"))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-3)


def test_bad_input():
    with pytest.raises(ValueError, match="`margin`"):
        ContrastiveLoss(margin=-0.1)
    with pytest.raises(ValueError, match="integer class labels"):
        ContrastiveLoss()(np.full(3, 0.5, "float32"), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="`y_pred`"):
        ContrastiveLoss()(np.zeros(3, "int32"), np.zeros(3))


def test_config_round_trip_and_xla_fit(tmp_path):
    loss = ContrastiveLoss(margin=0.7, distance="cosine")
    config = loss.get_config()
    assert set(inspect.signature(ContrastiveLoss).parameters) <= set(config)
    assert ContrastiveLoss.from_config(config).get_config() == config
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 8)
    x = (rng.normal(size=(4, 6))[y] + 0.3 * rng.normal(size=(32, 6))).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1), loss=loss, jit_compile=True)
    history = model.fit(x, y, batch_size=32, epochs=10, verbose=0).history["loss"]
    assert history[-1] < history[0]
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras").loss.get_config() == config


@pytest.mark.tf_only  # inspects the TensorFlow graph
def test_memory_is_quadratic():
    x = tf.zeros((53, 4))
    labels = tf.range(53) % 5

    def step(embeddings, y):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = tf.reduce_mean(contrastive_loss(y, embeddings))
        return tape.gradient(loss, embeddings)

    assert largest_tensor_elements(step, x, labels) <= 53 * 53
