"""Addons code that names its losses, or saved them, keeps working; results keep y_pred's dtype."""

import json
import zipfile

import addons_reference as ref
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmetric import addons

CLASS_NAMES = [
    "TripletSemiHardLoss",
    "TripletHardLoss",
    "ContrastiveLoss",
    "LiftedStructLoss",
    "NpairsLoss",
    "NpairsMultilabelLoss",
]
FUNCTION_NAMES = [
    "triplet_semihard_loss",
    "triplet_hard_loss",
    "contrastive_loss",
    "lifted_struct_loss",
    "npairs_loss",
    "npairs_multilabel_loss",
]


def _labelled(n=12, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), (np.arange(n) % 3).astype("int32")


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_keras_losses_get_resolves_addons_class_names(name):
    loss = keras.losses.get(f"Addons>{name}")
    assert type(loss) is getattr(addons, name)


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_keras_losses_get_resolves_addons_function_names(name):
    assert keras.losses.get(f"Addons>{name}") is getattr(addons, name)


@pytest.mark.parametrize("name", ["Addons>TripletSemiHardLoss"])
def test_compile_with_an_addons_string(name):
    x, y = _labelled()
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=name)
    value = model.evaluate(x, y, batch_size=12, verbose=0)
    expected = ref.triplet_semihard(y, model.predict(x, verbose=0).astype(np.float64))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    history = model.fit(x, y, batch_size=12, epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]


# Written as TensorFlow Addons 0.23 on Keras 2 wrote them: no `dtype`, and
# `reduction` "none" (Addons' classes returned the batch mean whatever it said)
# or Keras 2's "auto".
ADDONS_CONFIGS = {
    "TripletSemiHardLoss": {
        "name": None,
        "reduction": "none",
        "margin": 0.5,
        "distance_metric": "L2",
    },
    "TripletHardLoss": {
        "name": None,
        "reduction": "none",
        "margin": 0.5,
        "soft": False,
        "distance_metric": "squared-L2",
    },
    "LiftedStructLoss": {"name": None, "reduction": "none", "margin": 0.5},
    "ContrastiveLoss": {"name": "contrastive_loss", "reduction": "auto", "margin": 2.0},
    "NpairsLoss": {"name": "npairs_loss", "reduction": "none"},
    "NpairsMultilabelLoss": {"name": "npairs_multilabel_loss", "reduction": "none"},
}


def _reference_case(name, seed=0):
    """Inputs of the class `name` and the float64 reference of Addons' scalar."""
    x, y = _labelled(seed=seed)
    x64 = x.astype(np.float64)
    if name == "TripletSemiHardLoss":
        return y, x, ref.triplet_semihard(y, x64, 0.5)
    if name == "TripletHardLoss":
        return y, x, ref.triplet_hard(y, x64, 0.5, False, "squared-L2")
    if name == "LiftedStructLoss":
        return y, x, ref.lifted_struct(y, x64, 0.5)
    if name == "ContrastiveLoss":
        similar, dist = y % 2, np.abs(x[:, 0])
        return similar, dist, float(np.mean(ref.contrastive(similar, dist.astype(np.float64), 2.0)))
    logits = x[:, :3] @ x[:, 2:].T
    if name == "NpairsLoss":
        return y, logits, ref.npairs(y, logits.astype(np.float64))
    indicators = np.eye(3, dtype="float32")[y]
    indicators[::2, (y[::2] + 1) % 3] = 1.0
    return indicators, logits, ref.npairs_multilabel(indicators, logits.astype(np.float64))


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_config_written_by_addons_deserializes_to_addons_values(name):
    identifier = {
        "module": "tensorflow_addons.losses",
        "class_name": name,
        "config": ADDONS_CONFIGS[name],
        "registered_name": f"Addons>{name}",
    }
    loss = keras.losses.get(identifier)
    assert type(loss) is getattr(addons, name)
    y_true, y_pred, expected = _reference_case(name)
    value = loss(y_true, y_pred)
    assert value.shape == ()
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_keras_file_naming_addons_losses_loads(tmp_path):
    """A `.keras` file whose config names the losses as Addons registered them."""
    x, y = _labelled()
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, use_bias=False)])
    model.compile(optimizer="sgd", loss=addons.TripletSemiHardLoss())
    path = tmp_path / "ours.keras"
    model.save(path)
    addons_losses = {
        "class": {
            "module": "tensorflow_addons.losses.triplet",
            "class_name": "TripletSemiHardLoss",
            "config": ADDONS_CONFIGS["TripletSemiHardLoss"],
            "registered_name": "Addons>TripletSemiHardLoss",
        },
    }
    embeddings = model.predict(x, verbose=0).astype(np.float64)
    expected = {
        "class": ref.triplet_semihard(y, embeddings, 0.5),
    }
    for kind, loss_config in addons_losses.items():
        rewritten = tmp_path / f"addons-{kind}.keras"
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(rewritten, "w") as target:
            for item in source.namelist():
                data = source.read(item)
                if item == "config.json":
                    config = json.loads(data)
                    assert "tfmetric>addons.TripletSemiHardLoss" in json.dumps(config)
                    config["compile_config"]["loss"] = loss_config
                    data = json.dumps(config)
                target.writestr(item, data)
        loaded = keras.saving.load_model(rewritten)
        value = loaded.evaluate(x, y, batch_size=12, verbose=0)
        np.testing.assert_allclose(value, expected[kind], rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_classes_return_the_dtype_of_y_pred(name, dtype):
    y_true, y_pred, _ = _reference_case(name, seed=1)
    config = {**ADDONS_CONFIGS[name], "reduction": "sum_over_batch_size"}
    loss = getattr(addons, name).from_config({**config, "dtype": "float32"})
    cast = tf.cast(tf.constant(y_pred), dtype)
    value = loss(y_true, cast)
    assert value.dtype == cast.dtype
    # The float32 computation on the same (rounded) inputs, cast once at the end.
    reference = float(loss(y_true, tf.cast(cast, "float32")))
    np.testing.assert_allclose(float(value), reference, rtol=1e-2 if dtype != "float64" else 1e-6)
    per_sample = getattr(addons, name).from_config({**config, "dtype": "float32", "reduction": None})
    assert per_sample(y_true, cast).dtype == cast.dtype


@pytest.mark.parametrize("name", CLASS_NAMES + FUNCTION_NAMES)
def test_keras_serialize_deserialize_and_addons_strings(name):
    obj = getattr(addons, name)
    instance = obj() if isinstance(obj, type) else obj
    restored = keras.losses.deserialize(keras.losses.serialize(instance))
    if isinstance(obj, type):
        assert type(restored) is obj and restored.get_config() == instance.get_config()
    else:
        assert restored is obj
    # A bare name resolves to the class or function, as for Keras' own losses.
    assert keras.losses.deserialize(f"Addons>{name}") is obj
