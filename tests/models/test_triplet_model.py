import inspect
import json
import os
import re

import backend_ops
import keras
import numpy as np
import pytest

import tfmetric
from tfmetric.losses import TripletMarginLoss, triplet_margin_loss
from tfmetric.models import TripletModel


def _reference(triplets, margin, p=2.0, squared=False, similarity=False):
    """max(d(a,p) - d(a,n) + m, 0) per triplet, Minkowski-p or inner product, float64."""
    out = []
    for a, pos, neg in keras.ops.convert_to_numpy(triplets).astype(np.float64):
        if similarity:
            d_ap, d_an = -(a @ pos), -(a @ neg)
        else:
            d_ap = np.sum(np.abs(a - pos) ** p) ** (1 / p)
            d_an = np.sum(np.abs(a - neg) ** p) ** (1 / p)
        if squared:
            d_ap, d_an = d_ap**2, d_an**2
        out.append(max(d_ap - d_an + margin, 0.0))
    return np.array(out)


@pytest.mark.parametrize("margin", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_triplet_margin_loss_matches_definition(margin, squared, p):
    triplets = np.random.default_rng(int(p * 10 + margin)).normal(size=(9, 3, 4))
    distance = tfmetric.distances.Minkowski(p)
    got = triplet_margin_loss(
        triplets.astype("float32"), margin=margin, distance=distance, squared=squared
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got), _reference(triplets, margin, p, squared), rtol=1e-5, atol=1e-5
    )


def test_triplet_margin_loss_similarity():
    triplets = np.random.default_rng(3).normal(size=(7, 3, 4))
    got = triplet_margin_loss(triplets.astype("float32"), 0.3, distance="inner_product")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got), _reference(triplets, 0.3, similarity=True), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_no_nan_for_identical_embeddings_in_low_precision(dtype):
    triplets = np.ones((4, 3, 5), backend_ops.numpy_dtype(dtype))
    value, grad = backend_ops.value_and_grad(
        lambda t: keras.ops.mean(TripletMarginLoss()(None, t)), triplets
    )
    assert float(value) == pytest.approx(1.0)
    assert np.all(np.isfinite(grad.astype("float32")))


def test_loss_config_round_trip():
    loss = TripletMarginLoss(margin=0.2, distance=tfmetric.distances.Minkowski(3), squared=True)
    config = loss.get_config()
    assert set(inspect.signature(TripletMarginLoss).parameters) <= set(config)
    clone = TripletMarginLoss.from_config(config)
    assert clone.get_config() == config
    assert clone.distance == tfmetric.distances.Minkowski(3)


@pytest.mark.parametrize(
    "value, match", [(np.ones((4, 2, 3)), "y_pred"), (np.ones((4, 3)), "y_pred")]
)
def test_loss_bad_shape(value, match):
    with pytest.raises(ValueError, match=match):
        TripletMarginLoss()(None, value.astype("float32"))


def test_loss_bad_margin():
    with pytest.raises(ValueError, match="margin"):
        TripletMarginLoss(margin=-0.1)


def _embedder():
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )


def test_predictions_are_embedder_outputs():
    embedder = _embedder()
    model = TripletModel(embedder)
    assert model.embedder is embedder
    rng = np.random.default_rng(0)
    a, p, n = (rng.normal(size=(4, 6)).astype("float32") for _ in range(3))
    out = model.predict((a, p, n), verbose=0)
    assert out.shape == (4, 3, 3)
    for i, batch in enumerate((a, p, n)):
        np.testing.assert_allclose(out[:, i], keras.ops.convert_to_numpy(embedder(batch)), rtol=1e-5, atol=1e-6)
    from_dict = model.predict({"anchor": a, "positive": p, "negative": n}, verbose=0)
    np.testing.assert_allclose(from_dict, out, rtol=1e-6)
    d_ap, d_an = model.triplet_distances((a, p, n))
    expected = np.linalg.norm(out[:, 0] - out[:, 1], axis=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(d_ap), expected, rtol=1e-5)
    assert d_an.shape == (4,)


def test_fit_with_jit_and_keras_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    x = (rng.normal(size=(40, 6)) + y[:, None]).astype("float32")
    data = tfmetric.data.triplet_dataset(x, y, batch_size=16, seed=0)
    model = TripletModel(_embedder(), distance="squared_euclidean")
    model.compile(
        optimizer=keras.optimizers.Adam(0.01), loss=TripletMarginLoss(0.5), jit_compile=True
    )
    losses = model.fit(data, steps_per_epoch=15, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]

    (a, p, n), _ = next(iter(data))
    before = model.predict((a, p, n), verbose=0)
    path = os.path.join(tmp_path, "triplet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, TripletModel)
    assert loaded.distance == tfmetric.distances.SquaredEuclidean()
    np.testing.assert_allclose(loaded.predict((a, p, n), verbose=0), before, rtol=1e-5, atol=1e-6)
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(
        model.get_config(), sort_keys=True
    )
    assert isinstance(loaded.loss, TripletMarginLoss) and loaded.loss.margin == 0.5


def test_bad_arguments():
    with pytest.raises(TypeError, match="embedder"):
        TripletModel("not a model")
    model = TripletModel(_embedder())
    with pytest.raises(ValueError, match="inputs"):
        model((np.ones((2, 6), "float32"),) * 2)
    with pytest.raises(ValueError, match="(?i)missing"):
        model({"anchor": np.ones((2, 6), "float32")})


@pytest.mark.parametrize(
    "shape, match",
    [
        ((5, 3, 4), r"pass `\(x\[:, 0\], x\[:, 1\], x\[:, 2\]\)`"),
        ((5, 2, 4), r"would need shape \(N, 3, 4\): its second dimension is 2, not 3"),
    ],
)
def test_one_array_for_the_three_branches_is_a_named_error(shape, match):
    model = TripletModel(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    model.compile(optimizer="sgd", loss=TripletMarginLoss())
    x = np.ones(shape, "float32")
    for run in (
        lambda: model.fit(x, np.zeros((5, 3)), verbose=0),
        lambda: model.evaluate(x, np.zeros((5, 3)), verbose=0),
        lambda: model.predict(x, verbose=0),
    ):
        with pytest.raises(ValueError, match=r"`x` must be a tuple of 3 batches") as info:
            run()
        assert re.search(match, str(info.value))


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow", reason="offline mining runs under TensorFlow"
)
@pytest.mark.parametrize("sampler", [tfmetric.data.triplet_dataset, tfmetric.data.pair_dataset])
def test_offline_mining_under_another_backend_says_it_needs_tensorflow(sampler):
    model = TripletModel(_embedder())
    x, y = np.ones((12, 6), "float32"), np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
        sampler(x, y, 4, embedder=model.embedder, mining="hard")
