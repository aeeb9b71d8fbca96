"""Mahalanobis and WeightedL1: numpy references, Distance interface, Siamese-head use, saving."""

import inspect
import math
import os

import backend_ops
import keras
import numpy as np
import pytest

import tfmetric
from tfmetric.layers import learned_distances


def _mahalanobis_reference(x, y, matrix, squared=False):
    """||L(x - y)|| with L applied as x @ L, from the definition."""
    out = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            diff = (np.asarray(x[i], np.float64) - y[j]) @ matrix
            out[i, j] = diff @ diff if squared else math.sqrt(diff @ diff)
    return out


def _weighted_l1_reference(x, y, weights, bias):
    """Koch et al.: sigmoid of a weighted L1 of |x - y| (sign folded into the bias form)."""
    out = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            score = bias - sum(
                abs(w) * abs(a - b) for w, a, b in zip(weights, x[i], y[j], strict=True)
            )
            out[i, j] = 1.0 / (1.0 + math.exp(-score))
    return out


def _data(seed=0, n=5, m=4, dim=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype("float32"), rng.normal(size=(m, dim)).astype("float32")


@pytest.mark.parametrize("units,squared", [(None, False), (2, False), (3, True)])
def test_mahalanobis_matches_reference(units, squared):
    x, y = _data()
    layer = tfmetric.layers.Mahalanobis(units=units, squared=squared)
    layer.build((None, 3))
    matrix = np.random.default_rng(1).normal(size=(3, units or 3))
    layer.kernel.assign(matrix.astype("float32"))
    expected = _mahalanobis_reference(x, y, matrix, squared)
    distance = tfmetric.distances.get(layer)
    assert isinstance(distance, tfmetric.distances.Distance)
    assert distance.is_similarity is False
    np.testing.assert_allclose(keras.ops.convert_to_numpy(distance(x, y)), expected, rtol=1e-4, atol=1e-4)
    pairs = keras.ops.convert_to_numpy(layer(x[:4], y))
    np.testing.assert_allclose(pairs, np.diag(expected[:4]), rtol=1e-4, atol=1e-4)


def test_mahalanobis_starts_as_the_euclidean_distance():
    x, y = _data()
    distance = tfmetric.distances.get(tfmetric.layers.Mahalanobis())
    euclidean = tfmetric.distances.get("euclidean")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(distance(x, y)), keras.ops.convert_to_numpy(euclidean(x, y)), atol=1e-5)
    within = keras.ops.convert_to_numpy(distance(x))
    np.testing.assert_array_equal(np.diag(within), 0.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_l1_matches_reference(seed):
    x, y = _data(seed)
    layer = tfmetric.layers.WeightedL1()
    layer.build((None, 3))
    weights = np.array([0.5, 0.0, 2.0])
    layer.feature_weights.assign(weights.astype("float32"))
    layer.bias.assign(0.7)
    expected = _weighted_l1_reference(x, y, weights, 0.7)
    distance = tfmetric.distances.get(layer)
    assert distance.is_similarity is True
    np.testing.assert_allclose(keras.ops.convert_to_numpy(distance(x, y)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x[:4], y)), np.diag(expected[:4]), rtol=1e-5, atol=1e-6
    )
    logits = keras.ops.convert_to_numpy(layer.logits(x[:4], y))
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-logits)), np.diag(expected[:4]), rtol=1e-5)


def test_weighted_l1_weights_stay_non_negative_in_training():
    layer = tfmetric.layers.WeightedL1()
    x1 = keras.Input((3,))
    x2 = keras.Input((3,))
    model = keras.Model([x1, x2], layer(x1, x2))
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="binary_crossentropy")
    a, b = _data(n=8, m=8)
    model.fit([a, b], np.ones(8), epochs=3, verbose=0)
    assert np.all(keras.ops.convert_to_numpy(layer.feature_weights) >= 0.0)


@pytest.mark.parametrize("make", [tfmetric.layers.Mahalanobis, tfmetric.layers.WeightedL1])
def test_duplicates_have_finite_gradients(make):
    layer = make()
    x = np.repeat(_data()[0][:2], 2, axis=0)
    layer.build((None, x.shape[1]))
    distance = tfmetric.distances.get(layer)
    for fn in (
        lambda e: keras.ops.sum(layer(e, e)),
        lambda e: keras.ops.sum(distance(e)),
    ):
        value, (d_x, d_weights) = backend_ops.value_and_grad_with_variables(
            fn, x, layer.trainable_variables
        )
        assert np.isfinite(float(value))
        assert len(d_weights) == len(layer.trainable_variables) > 0
        assert all(np.all(np.isfinite(g)) for g in [d_x, *d_weights])


@pytest.mark.parametrize("make", [tfmetric.layers.Mahalanobis, tfmetric.layers.WeightedL1])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_are_computed_in_float32(make, dtype):
    layer = make()
    x, y = _data(n=4)
    low = layer(keras.ops.cast(x, dtype), keras.ops.cast(y, dtype))
    assert keras.backend.standardize_dtype(low.dtype) == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(low)))
    matrix = tfmetric.distances.get(layer)(keras.ops.cast(x, dtype), keras.ops.cast(y, dtype))
    assert keras.backend.standardize_dtype(matrix.dtype) == "float32"


@pytest.mark.parametrize("make", [tfmetric.layers.Mahalanobis, tfmetric.layers.WeightedL1])
def test_usable_as_the_distance_of_a_loss(make):
    layer = make()
    rng = np.random.default_rng(0)
    loss = tfmetric.losses.TripletLoss(distance=layer, mining="hard")
    assert loss.distance.layer is layer
    value = loss(np.array([0, 0, 1, 1]), rng.normal(size=(4, 3)).astype("float32"))
    assert np.isfinite(float(value))


@pytest.mark.parametrize(
    "make", [lambda: tfmetric.layers.Mahalanobis(units=2, squared=True), tfmetric.layers.WeightedL1]
)
def test_config_and_keras_file_round_trip(make, tmp_path):
    layer = make()
    config = layer.get_config()
    for parameter in inspect.signature(type(layer).__init__).parameters.values():
        if parameter.name not in ("self", "kwargs"):
            assert parameter.name in config
    assert type(layer).from_config(config).get_config() == config
    view = tfmetric.distances.get(tfmetric.distances.serialize(layer.as_distance()))
    assert isinstance(view, learned_distances.LearnedDistance)
    assert view.layer.get_config() == config

    x1 = keras.Input((3,))
    x2 = keras.Input((3,))
    model = keras.Model([x1, x2], layer(x1, x2))
    for variable in layer.trainable_variables:
        variable.assign(variable + 0.25)
    path = os.path.join(tmp_path, "pair_scorer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    a, b = _data(n=4, m=4)
    np.testing.assert_allclose(
        loaded.predict([a, b], verbose=0), model.predict([a, b], verbose=0), rtol=1e-6
    )


def test_distance_view_compiles_with_xla():
    layer = tfmetric.layers.WeightedL1()
    x, y = _data()
    distance = tfmetric.distances.get(layer)
    eager = distance(x, y)
    compiled = backend_ops.jit(lambda a, b: distance(a, b))(x, y)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(compiled), keras.ops.convert_to_numpy(eager), rtol=1e-6)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="`units`"):
        tfmetric.layers.Mahalanobis(units=0)
    with pytest.raises(ValueError, match="`layer`"):
        learned_distances.LearnedDistance("euclidean")
    x, y = _data(n=4, m=3)
    with pytest.raises(ValueError, match="`x1` and `x2`"):
        tfmetric.layers.Mahalanobis()(x, y)


@pytest.mark.parametrize(
    "make,loss",
    [
        (tfmetric.layers.WeightedL1, "binary_crossentropy"),
        (lambda: tfmetric.layers.Mahalanobis(units=2), "mse"),
    ],
)
def test_siamese_scorer_trains_and_round_trips(make, loss, tmp_path):
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(32, 3)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")
    same = (rng.random(32) < 0.5).astype("float32")
    x2[same == 1] = x1[same == 1] + 0.05 * rng.normal(size=(int(same.sum()), 3))
    head = make()
    model = tfmetric.models.SiameseModel(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)]), scorer=head
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
    model((x1[:1], x2[:1]))
    kernel = [np.array(v) for v in head.trainable_variables]
    assert kernel
    model.fit((x1, x2), same if loss != "mse" else 3.0 * (1.0 - same), epochs=3, verbose=0)
    assert any(
        not np.allclose(a, keras.ops.convert_to_numpy(b))
        for a, b in zip(kernel, head.trainable_variables, strict=True)
    )
    path = os.path.join(tmp_path, "siamese.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict((x1, x2), verbose=0), model.predict((x1, x2), verbose=0), rtol=1e-5
    )


@pytest.mark.parametrize("cls", [tfmetric.layers.Mahalanobis, tfmetric.layers.WeightedL1])
def test_built_layer_rejects_another_embedding_size(cls):
    # Mahalanobis gave a raw MatMul error; WeightedL1 broadcast a size-1 input silently.
    layer = cls()
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    layer(x, x[::-1])  # built for D = 5
    distance = tfmetric.distances.get(layer)
    for size in (3, 1):
        small = x[:, :size]
        for call, name in [
            (lambda s=small: layer(s, s), "x1"),
            (lambda s=small: distance(s, s), "x"),
            (lambda s=small: distance.paired(s, s), "x"),
        ]:
            with pytest.raises(ValueError, match=rf"`{name}` has embedding size {size}.*size 5"):
                call()
    if cls is tfmetric.layers.WeightedL1:
        with pytest.raises(ValueError, match="`x1` has embedding size 1"):
            layer.logits(x[:, :1], x[:, :1])
    else:
        with pytest.raises(ValueError, match="`x` has embedding size 3"):
            layer.transform(x[:, :3])
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(layer(x, x[::-1]))))


def test_serialized_with_weights_restores_the_trained_distance():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(5, 4)).astype("float32")
    mahalanobis = tfmetric.layers.Mahalanobis(units=2)
    mahalanobis.build((None, 4))
    matrix = rng.normal(size=(4, 2)).astype("float32")
    mahalanobis.kernel.assign(matrix)
    weighted = tfmetric.layers.WeightedL1()
    weighted.build((None, 4))
    weights, bias = np.array([0.5, 1.0, 2.0, 0.25], "float32"), np.float32(0.3)
    weighted.feature_weights.assign(weights)
    weighted.bias.assign(bias)
    cases = [
        (mahalanobis, _mahalanobis_reference(x, y, matrix)),
        (weighted, _weighted_l1_reference(x, y, weights, bias)),
    ]
    for layer, reference in cases:
        config = tfmetric.distances.serialize(layer, weights=True)
        restored = tfmetric.distances.get(config)
        assert restored.layer is not layer
        got = keras.ops.convert_to_numpy(restored(x, y))
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)
        assert restored.same_values(layer.as_distance()) and restored != layer.as_distance()
        fresh = tfmetric.distances.get(tfmetric.distances.serialize(layer))  # initial weights
        assert not fresh.same_values(layer.as_distance())
    assert "weights" not in tfmetric.distances.serialize(mahalanobis)
    assert tfmetric.distances.serialize("cosine", weights=True) == "cosine"
    mixed = tfmetric.distances.serialize(weighted, weights=True)
    mixed["weights"] = tfmetric.distances.serialize(mahalanobis, weights=True)["weights"]
    with pytest.raises(ValueError, match="Cannot restore the weights of `distance`"):
        tfmetric.distances.get(mixed)
