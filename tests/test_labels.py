"""The one label validator: integer-valued float labels work everywhere labels are taken.

Non-integer values raise a `ValueError` naming the argument, in every package;
the functional losses name their own arguments (`labels`, `embeddings`).
"""

import inspect

import keras
import numpy as np
import pytest

import tfmetric
from tfmetric.losses.batch import InBatchLoss

RNG = np.random.default_rng(0)
EMB = RNG.normal(size=(8, 4)).astype("float32")
INT_LABELS = np.arange(8) % 4
FLOAT_LABELS = INT_LABELS.astype("float32")
HALF_LABELS = FLOAT_LABELS + 0.5

IN_BATCH_LOSSES = sorted(
    {
        cls
        for cls in vars(tfmetric.losses).values()
        if inspect.isclass(cls) and issubclass(cls, InBatchLoss) and cls is not InBatchLoss
    },
    key=lambda cls: cls.__name__,
)
FUNCTIONAL_LOSSES = [getattr(tfmetric.losses, cls.fn.__name__) for cls in IN_BATCH_LOSSES]
ADDONS_FUNCTIONS = [
    (tfmetric.addons.losses.triplet_semihard_loss, EMB),
    (tfmetric.addons.losses.triplet_hard_loss, EMB),
    (tfmetric.addons.losses.lifted_struct_loss, EMB),
    (tfmetric.addons.losses.npairs_loss, EMB @ EMB.T),
]


def _raises_value_error(fn, argument):
    with pytest.raises(ValueError) as error:
        fn()
    assert f"`{argument}`" in str(error.value), str(error.value)


@pytest.mark.parametrize("cls", IN_BATCH_LOSSES, ids=lambda cls: cls.__name__)
def test_loss_classes_take_integer_valued_floats(cls):
    loss = cls()
    expected = float(loss(INT_LABELS, EMB))
    assert float(loss(FLOAT_LABELS, EMB)) == pytest.approx(expected, rel=1e-6)
    assert float(loss(FLOAT_LABELS[:, None], EMB)) == pytest.approx(expected, rel=1e-6)
    _raises_value_error(lambda: loss(HALF_LABELS, EMB), "y_true")


@pytest.mark.parametrize("fn", FUNCTIONAL_LOSSES, ids=lambda fn: fn.__name__)
def test_functional_losses_name_their_own_arguments(fn):
    expected = np.asarray(fn(INT_LABELS, EMB))
    np.testing.assert_allclose(np.asarray(fn(FLOAT_LABELS, EMB)), expected, rtol=1e-6)
    _raises_value_error(lambda: fn(HALF_LABELS, EMB), "labels")
    _raises_value_error(lambda: fn(INT_LABELS[:5], EMB), "labels")
    _raises_value_error(lambda: fn(INT_LABELS, EMB[:, 0]), "embeddings")
    _raises_value_error(lambda: fn(INT_LABELS, np.where(EMB > 1, np.nan, EMB)), "embeddings")


def test_addons_drop_ins():
    for fn, y_pred in ADDONS_FUNCTIONS:
        expected = float(fn(INT_LABELS, y_pred))
        assert float(fn(FLOAT_LABELS, y_pred)) == pytest.approx(expected, rel=1e-6), fn.__name__
        with pytest.raises(ValueError):
            fn(HALF_LABELS, y_pred)
    loss = tfmetric.addons.losses.TripletSemiHardLoss()
    assert float(loss(FLOAT_LABELS, EMB)) == pytest.approx(float(loss(INT_LABELS, EMB)))
    _raises_value_error(lambda: loss(HALF_LABELS, EMB), "y_true")


def test_heads():
    head = tfmetric.layers.CosFace(4)
    head.build((None, 4))
    expected = np.asarray(head(EMB, INT_LABELS))
    np.testing.assert_allclose(np.asarray(head(EMB, FLOAT_LABELS)), expected, rtol=1e-6)
    _raises_value_error(lambda: head(EMB, HALF_LABELS), "labels")


def test_samplers():
    dataset = tfmetric.data.class_balanced_dataset(
        EMB, FLOAT_LABELS, classes_per_batch=2, samples_per_class=2, seed=0
    )
    _, y = next(iter(dataset))
    assert y.dtype.is_integer
    _raises_value_error(
        lambda: tfmetric.data.class_balanced_dataset(
            EMB, HALF_LABELS, classes_per_batch=2, samples_per_class=2
        ),
        "y",
    )


def test_metrics():
    expected = tfmetric.metrics.map_at_r(EMB, INT_LABELS)
    assert tfmetric.metrics.map_at_r(EMB, FLOAT_LABELS) == pytest.approx(expected)
    _raises_value_error(lambda: tfmetric.metrics.map_at_r(EMB, HALF_LABELS), "query_labels")
    _raises_value_error(
        lambda: tfmetric.metrics.recall_at_k(EMB, INT_LABELS, EMB, HALF_LABELS, k=1),
        "gallery_labels",
    )
    scores = tfmetric.metrics.clustering_scores(EMB, FLOAT_LABELS)
    assert scores == pytest.approx(tfmetric.metrics.clustering_scores(EMB, INT_LABELS))
    _raises_value_error(lambda: tfmetric.metrics.clustering_scores(EMB, HALF_LABELS), "labels")


def test_index():
    index = tfmetric.index.ExactIndex()
    index.add(EMB, FLOAT_LABELS)
    _, _, labels = index.search(EMB[:2], k=1)
    assert labels.dtype.kind == "i"
    np.testing.assert_array_equal(labels[:, 0], INT_LABELS[:2])
    _raises_value_error(lambda: tfmetric.index.ExactIndex().add(EMB, HALF_LABELS), "labels")
    assert len(tfmetric.index.ExactIndex()) == 0


def test_bool_and_string_labels_still_raise_value_error():
    loss = tfmetric.losses.TripletLoss()
    _raises_value_error(lambda: loss(INT_LABELS > 1, EMB), "y_true")
    _raises_value_error(lambda: tfmetric.metrics.map_at_r(EMB, INT_LABELS > 1), "query_labels")
    _raises_value_error(lambda: tfmetric.index.ExactIndex().add(EMB, INT_LABELS.astype(str)), "labels")


def test_float_labels_train_under_jit():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=tfmetric.losses.TripletLoss(), jit_compile=True)
    history = model.fit(EMB, FLOAT_LABELS, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def _truncates_int64():
    """Whether the backend keeps only the low 32 bits of int64 values (JAX without x64)."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return not jax.config.jax_enable_x64


# 2**32 + 1 and 1 agree in their low 32 bits: truncated to int32 they are one class.
BIG_IDS = np.array([1, 2**32 + 1, 1, 3], dtype="int64")
BIG_IDS_RENUMBERED = np.array([0, 1, 0, 2], dtype="int64")


def _memory_model():
    embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=4)
    model.compile(optimizer="sgd", loss=tfmetric.losses.ContrastiveLoss())
    return model, EMB[:4], BIG_IDS


def _momentum_model():
    encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = tfmetric.models.MomentumContrastModel(encoder, queue_size=4, momentum=0.9)
    model.compile(optimizer="sgd")
    # Queries then keys: the ids of the 4 samples, twice.
    return model, EMB, np.tile(BIG_IDS, 2)


def _two_tower_model():
    query = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    candidate = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = tfmetric.models.TwoTowerModel(query, candidate)
    model.compile(
        optimizer="sgd", loss=tfmetric.losses.InBatchSoftmaxLoss(remove_accidental_hits=True)
    )
    return model, {"query": EMB[:4], "candidate": EMB[4:]}, BIG_IDS


@pytest.mark.parametrize("build", [_memory_model, _momentum_model, _two_tower_model],
                         ids=["cross_batch_memory", "momentum_contrast", "two_tower"])
def test_models_keep_labels_beyond_int32_apart_or_refuse_them(build):
    model, x, y = build()
    size = len(y)
    if _truncates_int64():
        before = [keras.ops.convert_to_numpy(w) for w in model.weights]
        with pytest.raises(ValueError, match="`y` holds labels beyond int32"):
            model.fit(x, y, batch_size=size, verbose=0)
        with pytest.raises(ValueError, match="`validation_data` holds labels beyond int32"):
            model.fit(x, y % 2**32, batch_size=size, validation_data=(x, y), verbose=0)
        with pytest.raises(ValueError, match="`y` holds labels beyond int32"):
            model.evaluate(x, y, batch_size=size, verbose=0)
        # Refused before any step: weights, memory and queue are untouched.
        for old, new in zip(before, model.weights, strict=True):
            np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
        return
    if isinstance(model, tfmetric.models.TwoTowerModel):
        # The accidental hits are the rows of equal ids: 0 and 2 only, as with small ids.
        loss = model.evaluate(x, y, batch_size=size, verbose=0)
        expected = model.evaluate(x, BIG_IDS_RENUMBERED, batch_size=size, verbose=0)
        np.testing.assert_allclose(loss, expected, rtol=1e-6)
        return
    model.fit(x, y, batch_size=size, shuffle=False, verbose=0)
    memory = model.memory if isinstance(model, tfmetric.models.CrossBatchMemoryModel) else model.queue
    stored = keras.ops.convert_to_numpy(memory.labels)
    np.testing.assert_array_equal(stored, BIG_IDS)  # the memory holds the batch's own ids
