"""tfmetric.addons in Keras: Addons' API, XLA training, serialization, memory, bad input."""

import inspect

import addons_reference as ref
import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_memory import largest_tensor_elements
from keras import ops

import tfmetric
from tfmetric import addons

EMPTY = inspect.Parameter.empty
KWARGS = "**kwargs"
# Written from TensorFlow Addons 0.23's sources (tensorflow_addons/losses/*.py):
# parameter names, in order, with their defaults (EMPTY = required).
ADDONS_SIGNATURES = {
    "TripletSemiHardLoss": [("margin", 1.0), ("distance_metric", "L2"), ("name", None), KWARGS],
    "TripletHardLoss": [
        ("margin", 1.0),
        ("soft", False),
        ("distance_metric", "L2"),
        ("name", None),
        KWARGS,
    ],
    "ContrastiveLoss": [
        ("margin", 1.0),
        ("reduction", "sum_over_batch_size"),
        ("name", "contrastive_loss"),
    ],
    "LiftedStructLoss": [("margin", 1.0), ("name", None), KWARGS],
    "NpairsLoss": [("name", "npairs_loss")],
    "NpairsMultilabelLoss": [("name", "npairs_multilabel_loss")],
    "triplet_semihard_loss": [
        ("y_true", EMPTY),
        ("y_pred", EMPTY),
        ("margin", 1.0),
        ("distance_metric", "L2"),
    ],
    "triplet_hard_loss": [
        ("y_true", EMPTY),
        ("y_pred", EMPTY),
        ("margin", 1.0),
        ("soft", False),
        ("distance_metric", "L2"),
    ],
    "contrastive_loss": [("y_true", EMPTY), ("y_pred", EMPTY), ("margin", 1.0)],
    "lifted_struct_loss": [("labels", EMPTY), ("embeddings", EMPTY), ("margin", 1.0)],
    "npairs_loss": [("y_true", EMPTY), ("y_pred", EMPTY)],
    "npairs_multilabel_loss": [("y_true", EMPTY), ("y_pred", EMPTY)],
    "metric_learning.pairwise_distance": [("feature", EMPTY), ("squared", False)],
    "metric_learning.angular_distance": [("feature", EMPTY)],
}


def _resolve(root, dotted):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


@pytest.mark.parametrize("name", sorted(ADDONS_SIGNATURES))
def test_addons_names_signatures_and_defaults(name):
    """`import tfmetric.addons as tfa` then `tfa.losses.<name>` works as with Addons."""
    ours = _resolve(addons.losses, name)
    assert _resolve(addons, name.split(".")[-1]) is ours
    params = list(inspect.signature(ours).parameters.values())
    expected = ADDONS_SIGNATURES[name]
    named = [p for p in expected if p != KWARGS]
    assert [(p.name, p.default) for p in params[: len(named)]] == named
    extra = params[len(named) :]
    if KWARGS in expected:
        assert [p.kind for p in extra] == [inspect.Parameter.VAR_KEYWORD]
    else:  # Keras 3 options added after Addons' own, all optional.
        assert all(p.default is not EMPTY for p in extra)


CLASSES = [
    addons.TripletSemiHardLoss,
    addons.TripletHardLoss,
    addons.ContrastiveLoss,
    addons.LiftedStructLoss,
    addons.NpairsLoss,
    addons.NpairsMultilabelLoss,
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_get_config_is_complete_and_registered(cls):
    config = cls().get_config()
    params = [p for p in inspect.signature(cls).parameters if p != "kwargs"]
    assert set(params) | {"reduction", "dtype"} <= set(config)
    assert cls.from_config(config).get_config() == config
    registered = keras.saving.get_registered_name(cls)
    assert registered == f"tfmetric>addons.{cls.__name__}"
    assert keras.saving.get_registered_object(registered) is cls


def test_names_do_not_collide_with_tfmetric_losses():
    assert keras.saving.get_registered_name(addons.ContrastiveLoss) != (
        keras.saving.get_registered_name(tfmetric.losses.ContrastiveLoss)
    )


@keras.saving.register_keras_serializable(package="tfmetric_tests")
def l1_distance(embeddings):
    return ops.sum(ops.abs(ops.expand_dims(embeddings, 1) - ops.expand_dims(embeddings, 0)), -1)


def _labelled(n=32, d=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), np.arange(n, dtype="int32") % classes


def _pairs(n=32, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2, d)).astype("float32")


@keras.saving.register_keras_serializable(package="tfmetric_tests")
class PairHead(keras.layers.Layer):
    """(B, 2, D) pair embeddings -> pair distances (B,) or similarity matrix (B, B)."""

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, x):
        if self.mode == "distance":
            return ops.sqrt(ops.sum(ops.square(x[:, 0] - x[:, 1]), axis=1) + 1e-12)
        return ops.matmul(x[:, 0], ops.transpose(x[:, 1]))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _setup(loss):
    """A small model, data and the loss for one class of tfmetric.addons."""
    if isinstance(loss, (addons.ContrastiveLoss, addons.NpairsLoss, addons.NpairsMultilabelLoss)):
        x = _pairs()
        mode = "distance" if isinstance(loss, addons.ContrastiveLoss) else "similarity"
        model = keras.Sequential([keras.Input((2, 6)), keras.layers.Dense(8), PairHead(mode)])
        if isinstance(loss, addons.ContrastiveLoss):
            y = np.arange(32) % 2
        elif isinstance(loss, addons.NpairsLoss):
            y = (np.arange(32) % 16).astype("int32")
        else:
            y = np.eye(5, dtype="float32")[np.arange(32) % 5]
        return model, x, y
    x, y = _labelled()
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)]), x, y


LOSSES = [
    addons.TripletSemiHardLoss(margin=0.5),
    addons.TripletSemiHardLoss(distance_metric="angular"),
    addons.TripletHardLoss(soft=True, distance_metric="squared-L2"),
    addons.TripletHardLoss(distance_metric=l1_distance),
    addons.ContrastiveLoss(margin=2.0),
    addons.LiftedStructLoss(margin=0.5),
    addons.NpairsLoss(),
    addons.NpairsMultilabelLoss(),
]
LOSS_IDS = [
    "semihard",
    "semihard-angular",
    "hard-soft-squared",
    "hard-callable",
    "contrastive",
    "lifted",
    "npairs",
    "npairs-multilabel",
]


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_trains_with_xla(loss):
    model, x, y = _setup(loss)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, jit_compile=True)
    before = model.get_weights()[0].copy()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.allclose(model.get_weights()[0], before)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_keras_file_round_trip(loss, tmp_path):
    model, x, y = _setup(loss)
    model.compile(optimizer="sgd", loss=loss)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    prediction = model.predict(x[:16], verbose=0)
    np.testing.assert_allclose(
        float(loaded.loss(y[:16], prediction)), float(loss(y[:16], prediction)), rtol=1e-6
    )


def test_class_equals_functional_and_weights_anchors():
    x, y = _labelled(n=12)
    loss = addons.TripletSemiHardLoss()
    np.testing.assert_allclose(
        float(loss(y, x)), float(addons.triplet_semihard_loss(y, x)), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(loss(y, x)), ref.triplet_semihard(y, x.astype(np.float64)), rtol=1e-5
    )
    weights = np.zeros(12, "float32")
    assert float(loss(y, x, sample_weight=weights)) == 0.0


@pytest.mark.parametrize(
    "fn",
    [addons.triplet_semihard_loss, addons.triplet_hard_loss, addons.lifted_struct_loss],
    ids=["semihard", "hard", "lifted"],
)
def test_memory_is_quadratic(fn):
    size = 13
    x, y = _labelled(n=size, d=5)

    def step(embeddings, labels):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            value = fn(labels, embeddings)
        return value, tape.gradient(value, embeddings)

    assert largest_tensor_elements(step, tf.constant(x), tf.constant(y)) <= size * size


def test_bad_input_is_named():
    x, y = _labelled(n=8)
    with pytest.raises(ValueError, match="distance_metric"):
        addons.TripletSemiHardLoss(distance_metric="L1")
    with pytest.raises(ValueError, match="distance_metric"):
        addons.triplet_hard_loss(y, x, distance_metric="cosine")
    with pytest.raises(ValueError, match="margin"):
        addons.LiftedStructLoss(margin=-1.0)
    with pytest.raises(ValueError, match="y_true"):
        addons.triplet_semihard_loss(y + 0.5, x)
    with pytest.raises(ValueError, match="y_pred"):
        addons.triplet_semihard_loss(y, x[:, :, None])
    with pytest.raises(ValueError, match="y_true"):
        addons.TripletHardLoss()(y[:4], x)
    with pytest.raises(ValueError, match="y_pred"):
        addons.npairs_loss(y, np.zeros((8, 5), "float32"))
    with pytest.raises(TypeError, match="unexpected"):
        addons.TripletSemiHardLoss(mining="hard")


@pytest.mark.parametrize(
    "loss",
    [addons.TripletSemiHardLoss(), addons.LiftedStructLoss(), addons.TripletHardLoss()],
    ids=["semihard", "lifted", "hard"],
)
def test_trains_with_float16_embeddings(loss):
    x, y = _labelled()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, dtype="mixed_float16")])
    assert model(x[:2]).dtype == "float16"
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, jit_compile=True)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
