"""Margins given as tensors and variables, as TensorFlow Addons' `FloatTensorLike` allowed."""

import addons_reference as ref
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmetric import addons

LABELS = np.array([0, 0, 1, 1, 2, 2, 0, 1])
X = np.random.default_rng(3).normal(size=(8, 3)).astype("float32")

FUNCTIONS = {
    "semihard": (addons.triplet_semihard_loss, ref.triplet_semihard),
    "hard": (addons.triplet_hard_loss, ref.triplet_hard),
    "lifted": (addons.lifted_struct_loss, ref.lifted_struct),
}
CLASSES = {
    "semihard": (addons.TripletSemiHardLoss, ref.triplet_semihard),
    "hard": (addons.TripletHardLoss, ref.triplet_hard),
    "lifted": (addons.LiftedStructLoss, ref.lifted_struct),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize(
    "margin", [tf.constant(0.7), np.float32(0.7), np.array(0.7), tf.constant(0.7, "float64")]
)
def test_tensor_and_numpy_margins(name, margin):
    fn, reference = FUNCTIONS[name]
    expected = reference(LABELS, X, margin=0.7)
    assert float(fn(LABELS, X, margin=margin)) == pytest.approx(expected, rel=1e-5)
    loss = CLASSES[name][0](margin=margin)
    assert float(loss(LABELS, X)) == pytest.approx(expected, rel=1e-5)
    assert loss.get_config()["margin"] == pytest.approx(0.7)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_symbolic_margin_under_xla(name):
    fn, reference = FUNCTIONS[name]
    compiled = tf.function(lambda m: fn(LABELS, X, margin=m), jit_compile=True)
    for margin in (0.3, 1.5):
        assert float(compiled(tf.constant(margin))) == pytest.approx(
            reference(LABELS, X, margin=margin), rel=1e-5
        )


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("make", [tf.Variable, keras.Variable])
def test_variable_margin_is_read_at_each_call(name, make):
    cls, reference = CLASSES[name]
    margin = make(0.2)
    loss = cls(margin=margin)
    assert float(loss(LABELS, X)) == pytest.approx(reference(LABELS, X, margin=0.2), rel=1e-5)
    margin.assign(1.3)
    assert float(loss(LABELS, X)) == pytest.approx(reference(LABELS, X, margin=1.3), rel=1e-5)
    assert loss.get_config()["margin"] == pytest.approx(1.3)
    assert isinstance(loss.get_config()["margin"], float)


def test_variable_margin_schedule_in_compiled_fit():
    margin = tf.Variable(0.0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=addons.TripletSemiHardLoss(margin))
    model.layers[0].set_weights([np.eye(3, dtype="float32")])
    seen = []

    class Schedule(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            margin.assign(0.5 * epoch)

        def on_epoch_end(self, epoch, logs=None):
            seen.append(logs["loss"])

    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=addons.TripletSemiHardLoss(margin),
        jit_compile=True,
    )
    model.fit(X, LABELS, batch_size=8, epochs=3, verbose=0, callbacks=[Schedule()])
    expected = [ref.triplet_semihard(LABELS, X, margin=0.5 * e) for e in range(3)]
    np.testing.assert_allclose(seen, expected, rtol=1e-5)
    assert len(set(np.round(seen, 6))) == 3


@pytest.mark.parametrize(
    "margin, match",
    [
        (tf.constant(-1.0), ">= 0"),
        (tf.constant([0.5]), "shape"),
        (tf.constant(1), "dtype int32"),
        (tf.Variable(-0.5), ">= 0"),
        (tf.constant(float("nan")), "number"),
    ],
)
def test_bad_tensor_margins_name_the_argument(margin, match):
    for make in (addons.TripletSemiHardLoss, addons.TripletHardLoss, addons.LiftedStructLoss):
        with pytest.raises(ValueError, match=match) as info:
            make(margin=margin)
        assert "`margin`" in str(info.value)
