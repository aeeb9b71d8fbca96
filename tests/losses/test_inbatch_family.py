"""Checks shared by the in-batch losses: degenerate batches, precision, XLA, saving."""

import inspect

import backend_ops
import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_memory import largest_tensor_elements

import tfmetric
from tfmetric import losses

# (class, functional twin, non-default arguments used for config and saving checks)
LOSSES = [
    (
        losses.MultiSimilarityLoss,
        losses.multi_similarity_loss,
        {"alpha": 1.5, "beta": 20.0, "base": 0.3, "epsilon": 0.2, "distance": "euclidean"},
    ),
    (losses.CircleLoss, losses.circle_loss, {"margin": 0.4, "gamma": 80.0}),
    (
        losses.SupervisedContrastiveLoss,
        losses.supervised_contrastive_loss,
        {"temperature": 0.2, "distance": "inner_product"},
    ),
    (losses.NTXentLoss, losses.nt_xent_loss, {"temperature": 0.5}),
    (losses.LiftedStructureLoss, losses.lifted_structure_loss, {"margin": 0.5, "distance": "cosine"}),
    (losses.NPairsLoss, losses.npairs_loss, {"distance": "cosine"}),
    (
        losses.SoftNearestNeighborLoss,
        losses.soft_nearest_neighbor_loss,
        {"temperature": 3.0, "distance": tfmetric.distances.Minkowski(3)},
    ),
]
IDS = [cls.__name__ for cls, _, _ in LOSSES]
CLASSES = pytest.mark.parametrize("cls, fn, kwargs", LOSSES, ids=IDS)


def _value_and_gradient(loss, labels, x):
    value, grad = backend_ops.value_and_grad(lambda e: loss(labels, e), x)
    assert grad.dtype == x.dtype
    return float(value), grad.astype("float32")


@CLASSES
@pytest.mark.parametrize(
    "labels",
    [np.arange(6), np.zeros(6, "int64"), np.array([7])],
    ids=["no-positive", "no-negative", "single"],
)
def test_degenerate_batches_are_finite(cls, fn, kwargs, labels):
    x = np.random.default_rng(0).normal(size=(len(labels), 3)).astype("float32")
    value, grad = _value_and_gradient(cls(), labels, x)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))
    # Every anchor is skipped when nothing can be compared; SupCon's L_out is
    # still defined (and non-zero) on a batch of positives only.
    if len(labels) == 1 or cls is not losses.SupervisedContrastiveLoss or labels[0] != labels[1]:
        assert value == 0.0 and np.all(grad == 0.0)


@CLASSES
def test_duplicate_and_collapsed_embeddings_are_finite(cls, fn, kwargs):
    labels = np.array([0, 0, 1, 1, 2, 2, 3])
    for x in (np.tile([[1.0, 2.0]], (7, 1)), np.zeros((7, 2)), np.repeat(np.eye(4, 2), 2, axis=0)[:7]):
        for loss in (cls(), cls(**kwargs)):
            value, grad = _value_and_gradient(loss, labels, x.astype("float32"))
            assert np.isfinite(value)
            assert np.all(np.isfinite(grad))


@CLASSES
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_embeddings(cls, fn, kwargs, dtype):
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    x = np.random.default_rng(1).normal(size=(8, 4)) * 30.0
    low = x.astype(backend_ops.numpy_dtype(dtype))
    value, grad = _value_and_gradient(cls(), labels, low)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))
    # The math runs in float32 on the rounded inputs.
    expected = float(np.mean(keras.ops.convert_to_numpy(fn(labels, low.astype("float32")))))
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


@CLASSES
def test_mixed_precision_training(cls, fn, kwargs):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(4)])
        model.compile(keras.optimizers.SGD(0.01), loss=cls())
        y = np.repeat(np.arange(4), 4)
        x = np.random.default_rng(2).normal(size=(16, 6)).astype("float32")
        loss = model.train_on_batch(x, y)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[-1].compute_dtype == "float16"
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


@CLASSES
def test_trains_under_xla(cls, fn, kwargs):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 4)
    x = (rng.normal(size=(8, 8))[y] + 0.3 * rng.normal(size=(32, 8))).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, "relu"), keras.layers.Dense(4)])
    model.compile(keras.optimizers.Adam(0.01), loss=cls(), jit_compile=True)
    history = model.fit(x, y, batch_size=32, epochs=8, verbose=0, shuffle=False).history["loss"]
    assert all(np.isfinite(history))
    assert history[-1] < history[0]


@CLASSES
def test_config_is_complete_and_round_trips(cls, fn, kwargs):
    loss = cls(**kwargs, name="custom")
    config = loss.get_config()
    assert set(inspect.signature(cls).parameters) <= set(config)
    assert set(inspect.signature(fn).parameters) - {"labels", "embeddings"} <= set(config)
    clone = cls.from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, cls) and restored.get_config() == config
    assert restored.distance == tfmetric.distances.get(kwargs.get("distance", loss.distance))


@CLASSES
def test_keras_file_round_trip(cls, fn, kwargs, tmp_path):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    loss = cls(**kwargs)
    model.compile("adam", loss=loss)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.loss, cls)
    assert restored.loss.get_config() == loss.get_config()
    labels = np.array([0, 0, 1, 1, 2])
    x = np.random.default_rng(4).normal(size=(5, 8)).astype("float32")
    np.testing.assert_allclose(
        float(restored.loss(labels, restored(x))), float(loss(labels, model(x))), rtol=1e-6
    )


@CLASSES
def test_sample_weight_and_labels_of_shape_b1(cls, fn, kwargs):
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    x = np.random.default_rng(5).normal(size=(8, 3)).astype("float32")
    loss = cls()
    np.testing.assert_allclose(float(loss(labels[:, None], x)), float(loss(labels, x)), rtol=1e-6)
    weights = np.linspace(0.0, 2.0, len(labels))
    per_sample = np.asarray(fn(labels, x))
    np.testing.assert_allclose(
        float(loss(labels, x, sample_weight=weights)), np.mean(per_sample * weights), rtol=1e-5
    )


@CLASSES
def test_large_integer_labels_stay_exact(cls, fn, kwargs):
    labels = np.array([2**40, 2**40, 2**40 + 1, 2**40 + 1, 2**40 + 2], dtype="int64")
    x = np.random.default_rng(6).normal(size=(5, 3)).astype("float32")
    expected = float(np.mean(keras.ops.convert_to_numpy(fn(np.array([0, 0, 1, 1, 2]), x))))
    np.testing.assert_allclose(float(cls()(labels, x)), expected, rtol=1e-6)


def _truncates_int64():
    if keras.backend.backend() != "jax":
        return False
    import jax

    return not jax.config.jax_enable_x64


@CLASSES
def test_labels_beyond_int32_never_merge(cls, fn, kwargs):
    # 2**32 + 5 and 5 agree in their low 32 bits (JAX without x64 keeps only those).
    labels = np.array([2**32 + 5, 2**32 + 5, 5, 5, 2**33], dtype="int64")
    x = np.random.default_rng(7).normal(size=(5, 3)).astype("float32")
    expected = float(np.mean(keras.ops.convert_to_numpy(fn(np.array([0, 0, 1, 1, 2]), x))))
    np.testing.assert_allclose(float(cls()(labels, x)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(cls()(labels[:, None], x)), expected, rtol=1e-6)
    if _truncates_int64():
        with pytest.raises(ValueError, match="`labels` holds labels beyond int32"):
            fn(labels, x)
    else:
        values = keras.ops.convert_to_numpy(fn(labels, x))
        np.testing.assert_allclose(np.mean(values), expected, rtol=1e-6)


@CLASSES
def test_float64_labels_up_to_2_53_and_string_labels(cls, fn, kwargs):
    x = np.random.default_rng(8).normal(size=(4, 3)).astype("float32")
    expected = float(np.mean(keras.ops.convert_to_numpy(fn(np.array([0, 0, 1, 1]), x))))
    labels = np.array([2.0**30, 2.0**30, 2.0**30 + 1, 2.0**30 + 1])  # beyond float32's 2**24
    np.testing.assert_allclose(float(cls()(labels, x)), expected, rtol=1e-6)
    strings = np.array(["a", "a", "b", "b"])
    with pytest.raises(ValueError, match="`y_true` must hold integer class labels.*strings"):
        cls()(strings, x)
    with pytest.raises(ValueError, match="`labels` must hold integer class labels.*strings"):
        fn(strings, x)


@pytest.mark.tf_only  # inspects the TensorFlow graph
@CLASSES
def test_memory_is_quadratic_forward_and_backward(cls, fn, kwargs):
    size = 61
    x = tf.constant(np.random.default_rng(0).normal(size=(size, 5)).astype("float32"))
    labels = tf.constant(np.arange(size) % 7)

    def step(embeddings, y):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            value = tf.reduce_mean(fn(y, embeddings))
        return value, tape.gradient(value, embeddings)

    assert largest_tensor_elements(step, x, labels) <= size * size


BAD_ARGUMENTS = [
    (losses.MultiSimilarityLoss, {"alpha": 0.0}, "`alpha`"),
    (losses.MultiSimilarityLoss, {"beta": -1.0}, "`beta`"),
    (losses.MultiSimilarityLoss, {"epsilon": -0.1}, "`epsilon`"),
    (losses.MultiSimilarityLoss, {"base": "high"}, "`base`"),
    (losses.CircleLoss, {"margin": -0.25}, "`margin`"),
    (losses.CircleLoss, {"gamma": 0}, "`gamma`"),
    (losses.SupervisedContrastiveLoss, {"temperature": 0.0}, "`temperature`"),
    (losses.NTXentLoss, {"temperature": -1.0}, "`temperature`"),
    (losses.LiftedStructureLoss, {"margin": -1.0}, "`margin`"),
    (losses.SoftNearestNeighborLoss, {"temperature": 0.0}, "`temperature`"),
    (losses.NPairsLoss, {"distance": "l7"}, "`distance`"),
    (losses.CircleLoss, {"distance": 3}, "`distance`"),
]


@pytest.mark.parametrize("cls, kwargs, message", BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@CLASSES
def test_functions_validate_too(cls, fn, kwargs):
    with pytest.raises(ValueError, match="`labels` has 5 labels"):
        fn(np.zeros(5, "int32"), np.zeros((4, 3), "float32"))
    with pytest.raises(ValueError, match="integer class labels"):
        cls()(np.full(4, 0.5, "float32"), np.zeros((4, 3), "float32"))


def test_public_api():
    for cls, fn, _ in LOSSES:
        assert getattr(tfmetric.losses, cls.__name__) is cls
        assert getattr(tfmetric.losses, fn.__name__) is fn
    assert losses.CircleLoss().gamma == 256.0 and losses.CircleLoss().margin == 0.25
    assert losses.MultiSimilarityLoss().get_config()["distance"] == "cosine"
    assert losses.SoftNearestNeighborLoss().distance == tfmetric.distances.SquaredEuclidean()
