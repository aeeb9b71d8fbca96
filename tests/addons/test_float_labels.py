"""Integer-valued float labels, as Keras pipelines carry them, work as Addons accepted them."""

import addons_reference as ref
import keras
import numpy as np
import pytest

import tfmetric
from tfmetric import addons


def _batch(n=12, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return (np.arange(n) % 3).astype("int64"), rng.normal(size=(n, d)).astype("float32")


LABEL_FUNCTIONS = {
    "triplet_semihard_loss": ref.triplet_semihard,
    "triplet_hard_loss": ref.triplet_hard,
    "lifted_struct_loss": ref.lifted_struct,
}


@pytest.mark.parametrize("name", sorted(LABEL_FUNCTIONS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_functions_and_classes_take_float_labels(name, dtype):
    labels, x = _batch()
    expected = LABEL_FUNCTIONS[name](labels, x.astype(np.float64))
    float_labels = labels.astype(dtype)
    np.testing.assert_allclose(float(getattr(addons, name)(float_labels, x)), expected, rtol=1e-5)
    cls = {
        "triplet_semihard_loss": addons.TripletSemiHardLoss,
        "triplet_hard_loss": addons.TripletHardLoss,
        "lifted_struct_loss": addons.LiftedStructLoss,
    }[name]
    np.testing.assert_allclose(float(cls()(float_labels[:, None], x)), expected, rtol=1e-5)


def test_npairs_takes_float_labels():
    labels, x = _batch(n=6)
    logits = x[:, :2] @ x[:, 2:4].T
    expected = ref.npairs(labels, logits.astype(np.float64))
    value = addons.NpairsLoss()(labels.astype("float32"), logits)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_non_integer_float_labels_still_raise():
    labels, x = _batch()
    with pytest.raises(ValueError, match="y_true"):
        addons.triplet_semihard_loss(labels + 0.5, x)
    with pytest.raises(ValueError, match="y_true"):
        addons.TripletHardLoss()(labels.astype("float32") + 0.25, x)


@pytest.mark.parametrize("name", ["Addons>triplet_semihard_loss", "Addons>TripletHardLoss"])
def test_compile_by_name_trains_on_float_labels(name):
    labels, x = _batch(n=24)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=name, jit_compile=True)
    value = model.evaluate(x, labels.astype("float32"), batch_size=24, verbose=0)
    embeddings = model.predict(x, verbose=0).astype(np.float64)
    reference = ref.triplet_semihard if "semihard" in name else ref.triplet_hard
    np.testing.assert_allclose(value, reference(labels, embeddings), rtol=1e-5)
    history = model.fit(x, labels.astype("float32"), batch_size=24, epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_anchor_triplet_and_pn_take_float_labels():
    labels, x = _batch()
    for fn in (tfmetric.losses.anchor_triplet_loss, tfmetric.losses.pn_loss):
        np.testing.assert_allclose(
            np.asarray(fn(labels.astype("float32"), x)), np.asarray(fn(labels, x)), rtol=1e-6
        )
