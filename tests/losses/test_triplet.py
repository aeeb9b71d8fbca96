import inspect

import backend_ops
import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_memory import largest_tensor_elements
from references import numeric_gradient, pairwise, triplet

import tfmetric
from tfmetric import distances
from tfmetric.losses import TripletLoss, triplet_loss

MINING = ["semi-hard", "hard", "all"]
DISTANCES = ["euclidean", "squared_euclidean", "cosine", "inner_product", "manhattan"]


def _batch(n=12, d=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    labels[:classes] = np.arange(classes)
    return labels, rng.normal(size=(n, d)).astype("float32")


def _value(labels, embeddings, **kwargs):
    return float(np.mean(keras.ops.convert_to_numpy(triplet_loss(labels, embeddings, **kwargs))))


@pytest.mark.parametrize("mining", MINING)
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("margin", [0.0, 0.3, 1.0])
def test_matches_reference(mining, distance, margin):
    labels, x = _batch(seed=int(margin * 10))
    expected = triplet(labels, x, margin=margin, distance=distance, mining=mining)
    got = _value(labels, x, margin=margin, distance=distance, mining=mining)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mining", MINING)
def test_soft_margin_matches_reference(mining):
    labels, x = _batch(seed=3)
    expected = triplet(labels, x, distance="euclidean", mining=mining, soft=True)
    np.testing.assert_allclose(_value(labels, x, mining=mining, soft_margin=True), expected, rtol=1e-4)


def test_singleton_classes_and_pk_batch():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 4])
    x = np.random.default_rng(5).normal(size=(12, 3)).astype("float32")
    for mining in MINING:
        np.testing.assert_allclose(
            _value(labels, x, mining=mining, margin=0.5),
            triplet(labels, x, mining=mining, margin=0.5),
            rtol=1e-4,
        )


@pytest.mark.parametrize("mining", MINING)
@pytest.mark.parametrize("soft", [False, True])
def test_gradient_matches_finite_differences(mining, soft):
    labels, x = _batch(n=8, d=3, classes=3, seed=7)
    grad = backend_ops.grad(
        lambda e: keras.ops.mean(triplet_loss(labels, e, margin=0.5, mining=mining, soft_margin=soft)),
        x,
    )
    numeric = numeric_gradient(
        lambda e: triplet(labels, e, margin=0.5, mining=mining, soft=soft), x.astype(np.float64)
    )
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("margin", [0.2, 2.0])
def test_batch_all_value_and_gradient_on_uneven_classes(margin):
    # Classes of 1 to 20 samples: an anchor has up to 19 positives, a negative column gathers
    # counts from many of them, and with margin 2 most terms are active.
    labels = np.repeat(np.arange(6), [1, 2, 3, 5, 9, 20])
    x = np.random.default_rng(11).normal(size=(len(labels), 3))
    loss, grad = backend_ops.value_and_grad(
        lambda e: TripletLoss(mining="all", margin=margin)(labels, e), x.astype("float32")
    )
    expected = triplet(labels, x, margin=margin, mining="all")
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # The finite differences take the same definition over all (a, p, n) at once (the loop
    # form above, 240 times over, took ~5 s); it equals the loop form here.
    np.testing.assert_allclose(_batch_all(labels, x, margin), expected, rtol=1e-12)
    numeric = numeric_gradient(lambda e: _batch_all(labels, e, margin), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)


def _batch_all(labels, x, margin):
    """Batch-all triplet loss on euclidean distances: mean of the positive hinge terms."""
    d = pairwise(x, x, "euclidean")
    same = labels[:, None] == labels[None, :]
    positive, negative = same & ~np.eye(len(labels), dtype=bool), ~same
    gap = d[:, :, None] - d[:, None, :] + margin  # [anchor, positive, negative]
    active = positive[:, :, None] & negative[:, None, :] & (gap > 0)
    return float(np.sum(gap[active]) / np.count_nonzero(active)) if active.any() else 0.0


def _mined_gradient(labels, x, margin, mining):
    """Value and gradient (numpy, float64) of hard / semi-hard mining on squared euclidean distances.

    Ties go to the first column, as `argmin`/`argmax` break them.
    """
    d = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    same = labels[:, None] == labels[None, :]
    pos, neg = same & ~np.eye(len(labels), dtype=bool), ~same
    rows = np.arange(len(labels))
    pairs = []  # (anchor rows, positive columns, negative columns) of the terms
    if mining == "hard":
        valid = pos.any(1) & neg.any(1)
        p = np.argmax(np.where(pos, d, -np.inf), axis=1)
        n = np.argmin(np.where(neg, d, np.inf), axis=1)
        pairs.append((rows[valid], p[valid], n[valid]))
    else:
        order = np.argsort(~pos, axis=1, kind="stable")  # each anchor's positives first
        for k in range(pos.sum(1).max()):
            a = rows[(pos.sum(1) > k) & neg.any(1)]
            p = order[a, k]
            farther = neg[a] & (d[a] > d[a, p][:, None])
            nearest = np.argmin(np.where(farther, d[a], np.inf), axis=1)
            farthest = np.argmax(np.where(neg[a], d[a], -np.inf), axis=1)
            pairs.append((a, p, np.where(farther.any(1), nearest, farthest)))
    a, p, n = (np.concatenate(parts) for parts in zip(*pairs, strict=True))
    gap = d[a, p] - d[a, n] + margin
    on = gap > 0
    g = np.zeros_like(d)
    np.add.at(g, (a[on], p[on]), 1.0 / len(a))
    np.add.at(g, (a[on], n[on]), -1.0 / len(a))
    sym = g + g.T
    return np.sum(gap[on]) / len(a), 2 * (sym.sum(1)[:, None] * x - sym @ x)


@pytest.mark.parametrize("mining", ["hard", "semi-hard"])
def test_wide_batch_mining_matches_numpy_with_tied_distances(mining):
    # B = 1024: the mining's row argmin/argmax run through tiles of columns; small
    # integer embeddings tie many distances, so the first column of each tie matters.
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.arange(1024) // 4)
    x = rng.integers(-2, 3, size=(1024, 3)).astype("float64")
    loss, grad = backend_ops.value_and_grad(
        lambda e: TripletLoss(mining=mining, margin=2.0, distance="squared_euclidean")(labels, e),
        x.astype("float32"),
    )
    value, expected = _mined_gradient(labels, x, 2.0, mining)
    np.testing.assert_allclose(float(loss), value, rtol=1e-5)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mining", MINING)
@pytest.mark.parametrize("labels", [np.arange(6), np.zeros(6, "int64")], ids=["no-positive", "no-negative"])
def test_degenerate_batches_give_zero_and_zero_gradient(mining, labels):
    x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    loss, grad = backend_ops.value_and_grad(lambda e: TripletLoss(mining=mining)(labels, e), x)
    assert float(loss) == 0.0
    assert np.all(np.isfinite(grad)) and np.all(grad == 0.0)


@pytest.mark.parametrize("mining", MINING)
@pytest.mark.parametrize("distance", DISTANCES)
def test_duplicate_and_collapsed_embeddings_are_finite(mining, distance):
    labels = np.array([0, 0, 1, 1, 2, 2])
    for x in (np.tile([[1.0, 2.0]], (6, 1)), np.zeros((6, 2)), np.repeat(np.eye(3, 2), 2, axis=0)):
        loss, grad = backend_ops.value_and_grad(
            lambda e: TripletLoss(mining=mining, distance=distance)(labels, e), x.astype("float32")
        )
        assert np.isfinite(float(loss))
        assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mining", MINING)
def test_low_precision_embeddings(dtype, mining):
    labels, x = _batch()
    low = (x * 100.0).astype(backend_ops.numpy_dtype(dtype))
    loss, grad = backend_ops.value_and_grad(lambda e: TripletLoss(mining=mining)(labels, e), low)
    assert grad.dtype == low.dtype
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(grad.astype("float32")))
    expected = triplet(labels, low.astype("float32"), mining=mining)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-3)


def test_class_keeps_large_integer_labels_exact():
    # 2**40 and 2**40 + 1 collide once cast to float32; the class must not merge them.
    labels = np.array([2**40, 2**40, 2**40 + 1, 2**40 + 1], dtype="int64")
    x = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]], "float32")
    got = float(TripletLoss(mining="hard")(labels, x))
    np.testing.assert_allclose(got, triplet([0, 0, 1, 1], x, mining="hard"), rtol=1e-6)


def test_labels_of_shape_b1_and_sample_weight():
    labels, x = _batch()
    loss = TripletLoss(mining="hard")
    np.testing.assert_allclose(float(loss(labels[:, None], x)), float(loss(labels, x)), rtol=1e-6)
    per_anchor = np.asarray(triplet_loss(labels, x, mining="hard"))
    weights = np.linspace(0.0, 2.0, len(labels))
    np.testing.assert_allclose(
        float(loss(labels, x, sample_weight=weights)), np.mean(per_anchor * weights), rtol=1e-5
    )


@pytest.mark.parametrize(
    "labels, embeddings, message",
    [
        (np.zeros((4, 2), "int32"), np.zeros((4, 3)), "`y_true`"),
        (np.zeros(5, "int32"), np.zeros((4, 3)), "`y_true` has 5 labels"),
        (np.full(4, 0.5, "float32"), np.zeros((4, 3)), "integer class labels"),
        (np.zeros(4, "int32"), np.zeros((4,)), "`y_pred`"),
        (np.zeros(4, "int32"), np.zeros((4, 3, 1)), "`y_pred`"),
    ],
)
def test_bad_input_names_the_argument(labels, embeddings, message):
    with pytest.raises(ValueError, match=message):
        TripletLoss()(labels, embeddings)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"margin": -1.0}, "`margin`"), ({"mining": "hardest"}, "`mining`"), ({"distance": "l7"}, "`distance`")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TripletLoss(**kwargs)


def test_config_is_complete_and_round_trips():
    loss = TripletLoss(margin=0.3, distance=distances.Minkowski(3), mining="all", soft_margin=True, name="t")
    config = loss.get_config()
    assert set(inspect.signature(TripletLoss).parameters) <= set(config)
    clone = TripletLoss.from_config(config)
    assert clone.get_config() == config
    assert clone.distance == distances.Minkowski(3)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, TripletLoss) and restored.get_config() == config


def _model(dim=4):
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, "relu"), keras.layers.Dense(dim)])


@pytest.mark.parametrize("mining", MINING)
@pytest.mark.parametrize("distance", ["euclidean", "cosine", "inner_product"])
def test_trains_under_xla(mining, distance):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 8)
    x = (rng.normal(size=(8, 8))[y] + 0.3 * rng.normal(size=(64, 8))).astype("float32")
    model = _model()
    model.compile(
        keras.optimizers.Adam(0.01),
        loss=TripletLoss(mining=mining, distance=distance, margin=0.5),
        jit_compile=True,
    )
    history = model.fit(x, y, batch_size=64, epochs=15, verbose=0, shuffle=False).history["loss"]
    assert all(np.isfinite(history))
    assert history[-1] < history[0]


def test_keras_file_round_trip(tmp_path):
    model = _model()
    loss = TripletLoss(margin=0.25, mining="hard", distance="cosine")
    model.compile("adam", loss=loss)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.loss, TripletLoss)
    assert restored.loss.get_config() == loss.get_config()
    x = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.tf_only  # inspects the TensorFlow graph
@pytest.mark.parametrize("mining", MINING)
def test_memory_is_quadratic_forward_and_backward(mining):
    size, dim = 61, 5
    x = tf.constant(np.random.default_rng(0).normal(size=(size, dim)).astype("float32"))
    labels = tf.constant(np.arange(size) % 7)

    def step(embeddings, y):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = tf.reduce_mean(triplet_loss(y, embeddings, mining=mining))
        return loss, tape.gradient(loss, embeddings)

    assert largest_tensor_elements(step, x, labels) <= size * size


@pytest.mark.tf_only
def test_memory_check_detects_a_cubic_tensor():
    x = tf.zeros((13, 13))
    assert largest_tensor_elements(lambda a: a[:, :, None] + a[None], x) == 13**3


def test_public_api():
    assert tfmetric.losses.TripletLoss is TripletLoss
    assert TripletLoss().get_config()["mining"] == "semi-hard"
    assert TripletLoss().margin == 1.0
