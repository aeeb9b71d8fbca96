"""ProxyModel: fit(x, labels) with XLA, head weights training, export, saving, mixed precision."""

import inspect
import os

import keras
import numpy as np
import pytest

import tfmetric

HEADS = {
    "ArcFace": lambda: tfmetric.layers.ArcFace(4, margin=0.3, scale=16.0),
    "CosFace": lambda: tfmetric.layers.CosFace(4, margin=0.2, scale=16.0),
    "SubCenterArcFace": lambda: tfmetric.layers.SubCenterArcFace(4, centers=2, scale=16.0),
    "NormalizedSoftmax": lambda: tfmetric.layers.NormalizedSoftmax(4, temperature=0.1),
    "ProxyAnchor": lambda: tfmetric.layers.ProxyAnchor(4),
    "ProxyNCA": lambda: tfmetric.layers.ProxyNCA(4),
}


def _data(size=64, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = 2.0 * rng.normal(size=(4, dim))
    labels = np.arange(size) % 4
    return (centers[labels] + rng.normal(size=(size, dim))).astype("float32"), labels


def _embedder(dim=8, dtype=None):
    return keras.Sequential(
        [
            keras.Input((dim,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(4, dtype="float32" if dtype else None),
        ]
    )


@pytest.mark.parametrize("name", HEADS)
def test_fit_with_xla_lowers_the_loss_and_trains_the_proxies(name):
    x, labels = _data()
    model = tfmetric.models.ProxyModel(_embedder(), HEADS[name]())
    model.compile(optimizer=keras.optimizers.Adam(0.02), jit_compile=True)
    proxies = np.array(model.head.proxies)
    assert model.head.proxies.path in {v.path for v in model.trainable_variables}
    history = model.fit(x, labels, batch_size=32, epochs=8, shuffle=False, verbose=0)
    first, last = history.history["loss"][0], history.history["loss"][-1]
    assert np.isfinite(last)
    assert last < first - 0.1 * abs(first)
    assert not np.allclose(keras.ops.convert_to_numpy(model.head.proxies), proxies)


def test_predict_returns_embeddings_and_embedder_exports_without_head():
    x, labels = _data(size=16)
    embedder = _embedder()
    model = tfmetric.models.ProxyModel(embedder, tfmetric.layers.ArcFace(4))
    assert model.embedder is embedder
    np.testing.assert_allclose(
        model.predict(x, verbose=0), embedder.predict(x, verbose=0), rtol=1e-6
    )
    head_paths = {v.path for v in model.head.weights}
    assert head_paths and not head_paths & {v.path for v in embedder.weights}
    assert len(model.weights) == len(embedder.weights) + len(model.head.weights)


def test_keras_round_trip_without_custom_objects(tmp_path):
    x, labels = _data(size=32)
    model = tfmetric.models.ProxyModel(_embedder(), tfmetric.layers.CosFace(4, scale=16.0))
    model.compile(optimizer="adam")
    model.fit(x, labels, batch_size=16, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "proxy.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, tfmetric.models.ProxyModel)
    assert isinstance(loaded.head, tfmetric.layers.CosFace)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_allclose(
        loaded.evaluate(x, labels, verbose=0), model.evaluate(x, labels, verbose=0), rtol=1e-6
    )
    # The optimizer comes back compiled and training continues.
    assert loaded.optimizer is not None
    history = loaded.fit(x, labels, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_at_scale_64_is_finite(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        x, labels = _data(size=32)
        embedder = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)]
        )
        model = tfmetric.models.ProxyModel(embedder, tfmetric.layers.ArcFace(4, scale=64.0))
        model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=True)
        assert model.head.compute_dtype == "float32"
        history = model.fit(x * 100.0, labels, batch_size=16, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(v))) for v in model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous)


def test_sample_weight_and_regularisation_enter_the_loss():
    x, labels = _data(size=8)
    head = tfmetric.layers.NormalizedSoftmax(4, temperature=0.5)
    embedder = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4, kernel_regularizer=keras.regularizers.L2(0.1))]
    )
    model = tfmetric.models.ProxyModel(embedder, head)
    embeddings = model(x)
    values = keras.ops.convert_to_numpy(head(embeddings, labels))
    weights = np.linspace(0.0, 2.0, 8).astype("float32")
    penalty = 0.1 * np.sum(np.square(keras.ops.convert_to_numpy(embedder.layers[0].kernel)))
    loss = model.compute_loss(x, labels, embeddings, sample_weight=weights)
    np.testing.assert_allclose(float(loss), np.mean(values * weights) + penalty, rtol=1e-5)


def test_unbuilt_embedder_is_built_on_first_call():
    model = tfmetric.models.ProxyModel(keras.layers.Dense(3), tfmetric.layers.ProxyNCA(4))
    assert not model.head.built
    x, labels = _data(size=16)
    model.compile(optimizer="adam")
    history = model.fit(x, labels, batch_size=8, epochs=1, verbose=0)
    assert model.head.built and tuple(model.head.proxies.shape) == (4, 3)
    assert np.isfinite(history.history["loss"][0])


def test_bad_arguments():
    with pytest.raises(TypeError, match="`embedder`"):
        tfmetric.models.ProxyModel("dense", tfmetric.layers.ArcFace(3))
    with pytest.raises(TypeError, match="`head`"):
        tfmetric.models.ProxyModel(_embedder(), "arcface")
    model = tfmetric.models.ProxyModel(_embedder(), tfmetric.layers.ArcFace(3))
    with pytest.raises(ValueError, match="`loss`"):
        model.compile(optimizer="adam", loss="mse")
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="labels"):
        model.fit(_data(size=8)[0], epochs=1, verbose=0)


class LogitsHead(keras.layers.Layer):
    """Breaks the head contract: returns `(B, C)` logits instead of per-sample losses."""

    def build(self, embeddings_shape, labels_shape=None):
        self.kernel = self.add_weight(shape=(embeddings_shape[-1], 4))

    def call(self, embeddings, labels):
        return keras.ops.matmul(embeddings, self.kernel)


def test_head_returning_another_shape_than_per_sample_losses_is_a_clear_error():
    model = tfmetric.models.ProxyModel(_embedder(), LogitsHead())
    model.compile(optimizer="adam")
    x, labels = _data(size=8)
    with pytest.raises(ValueError, match=r"`head` must return one loss value per sample.*\(8, 4\)"):
        model.fit(x, labels, batch_size=8, epochs=1, verbose=0)


def test_config_holds_every_argument_and_rebuilds():
    model = tfmetric.models.ProxyModel(_embedder(), tfmetric.layers.ProxyAnchor(4), name="proxy")
    config = model.get_config()
    for parameter in inspect.signature(tfmetric.models.ProxyModel.__init__).parameters:
        if parameter not in ("self", "kwargs"):
            assert parameter in config
    rebuilt = tfmetric.models.ProxyModel.from_config(config)
    assert rebuilt.name == "proxy"
    assert rebuilt.head.get_config() == model.head.get_config()
    assert keras.saving.get_registered_name(tfmetric.models.ProxyModel) == "tfmetric>ProxyModel"


@pytest.mark.parametrize("jit_compile", [False, True])
def test_labels_outside_the_heads_classes_are_refused_before_training(jit_compile):
    # In the compiled step an out-of-range label has a zero one-hot row: a finite, meaningless loss.
    model = tfmetric.models.ProxyModel(_embedder(), tfmetric.layers.ArcFace(3))
    model.compile(optimizer="adam", jit_compile=jit_compile)
    x, _ = _data(size=8)
    weights = [w.copy() for w in model.get_weights()]
    for labels, shown in (([0, 1, 2, 3] * 2, r"\[0, 3\]"), ([0, 1, 2, -1] * 2, r"\[-1, 2\]")):
        with pytest.raises(ValueError, match=rf"`y` must hold class labels in \[0, 3\).*{shown}"):
            model.fit(x, np.array(labels), epochs=1, verbose=0)
        with pytest.raises(ValueError, match=r"`y` must hold class labels in \[0, 3\)"):
            model.evaluate(x, np.array(labels), verbose=0)
    with pytest.raises(ValueError, match=r"`validation_data` must hold class labels"):
        model.fit(x, np.arange(8) % 3, validation_data=(x, np.arange(8) % 4), verbose=0)
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    history = model.fit(x, (np.arange(8) % 3).astype("float32"), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
