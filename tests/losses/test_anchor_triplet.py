"""AnchorTripletLoss and PNLoss against numpy references of TensorFlow Similarity's definitions."""

import inspect

import backend_ops
import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_memory import largest_tensor_elements
from references import numeric_gradient, pairwise

import tfmetric
from tfmetric.losses import AnchorTripletLoss, PNLoss, anchor_triplet_loss, pn_loss

POSITIVE = ["hard", "easy"]
NEGATIVE = ["hard", "semi-hard", "easy"]


def tfsim_reference(labels, x, distance, positive, negative, margin, pn):
    """TensorFlow Similarity's TripletLoss / PNLoss, anchor by anchor (float64 loops).

    Positive: farthest ("hard") or closest ("easy") same-label sample other
    than the anchor. Negative: closest ("hard"), farthest ("easy"), or
    ("semi-hard") the closest one farther than the anchor's farthest
    positive, else the farthest. PN: the negative distance is
    min(d(a, n), d(p, n)). Term: max(gap + margin, 0), or log(1 + exp(gap))
    for margin None; mean over anchors (every anchor here has both).
    """
    d = pairwise(x, x, distance)
    if distance == "inner_product":
        d = -d
    values = []
    for a in range(len(labels)):
        positives = [j for j in range(len(labels)) if labels[j] == labels[a] and j != a]
        negatives = [j for j in range(len(labels)) if labels[j] != labels[a]]
        assert positives and negatives
        by_distance = sorted(positives, key=lambda j: (d[a, j], j))
        p = by_distance[-1] if positive == "hard" else by_distance[0]
        farthest_positive = max(d[a, j] for j in positives)
        if negative == "hard":
            n = min(negatives, key=lambda j: (d[a, j], j))
        elif negative == "easy":
            n = max(negatives, key=lambda j: (d[a, j], -j))
        else:
            farther = [j for j in negatives if d[a, j] > farthest_positive]
            if farther:
                n = min(farther, key=lambda j: (d[a, j], j))
            else:
                n = max(negatives, key=lambda j: (d[a, j], -j))
        d_an = min(d[a, n], d[p, n]) if pn else d[a, n]
        gap = d[a, p] - d_an
        values.append(np.log1p(np.exp(gap)) if margin is None else max(gap + margin, 0.0))
    return float(np.mean(values))


def _pk_batch(p=4, k=3, d=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(p), k)
    rng.shuffle(labels)
    return labels, rng.normal(size=(p * k, d)).astype("float32")


def _value(fn, labels, x, **kwargs):
    return float(np.mean(keras.ops.convert_to_numpy(fn(labels, x, **kwargs))))


@pytest.mark.parametrize("pn", [False, True], ids=["triplet", "pn"])
@pytest.mark.parametrize("margin", [1.0, 0.2, None])
@pytest.mark.parametrize("negative", NEGATIVE)
@pytest.mark.parametrize("positive", POSITIVE)
def test_matches_tfsim_reference(positive, negative, margin, pn):
    fn = pn_loss if pn else anchor_triplet_loss
    for seed, distance in enumerate(["cosine", "euclidean", "inner_product"]):
        labels, x = _pk_batch(seed=seed)
        kwargs = {"positive_mining": positive, "negative_mining": negative, "margin": margin}
        expected = tfsim_reference(labels, x, distance, positive, negative, margin, pn)
        got = _value(fn, labels, x, distance=distance, **kwargs)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=distance)


def test_semi_hard_is_relative_to_the_farthest_positive_by_hand():
    # Anchor 0 at 0; positives at 1 and 5; negatives at 3 and 7. With the easy
    # positive (1 away), semi-hard still looks beyond the farthest positive
    # (5): the negative is the one at 7, so max(1 - 7 + 5, 0) = 0 (the
    # negative at 3 would give 3).
    x = np.array([[0.0], [1.0], [5.0], [3.0], [7.0]], "float32")
    labels = np.array([0, 0, 0, 1, 1])
    values = anchor_triplet_loss(
        labels, x, distance="euclidean", positive_mining="easy", margin=5.0
    )
    assert float(values[0]) == 0.0


def test_semi_hard_falls_back_to_the_farthest_negative_by_hand():
    # Anchor 0 at 0, its positive 5 away; negatives 1 and 2 away: none beyond
    # 5, so the farthest (2 away) is used: 5 - 2 + 1 = 4 (hard mining: 5).
    x = np.array([[0.0], [5.0], [1.0], [2.0]], "float32")
    labels = np.array([0, 0, 1, 1])
    semi_hard = anchor_triplet_loss(labels, x, distance="euclidean", margin=1.0)
    hard = anchor_triplet_loss(labels, x, distance="euclidean", negative_mining="hard", margin=1.0)
    assert float(semi_hard[0]) == pytest.approx(4.0)
    assert float(hard[0]) == pytest.approx(5.0)
    # PN: the negative's distance to the positive counts too: min(2, 3) = 2.
    assert float(pn_loss(labels, x, distance="euclidean")[0]) == pytest.approx(4.0)


def test_anchors_without_positive_or_negative_give_zero():
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    labels = np.array([0, 0, 1, 2, 2])  # anchor 2 has no positive
    for fn in (anchor_triplet_loss, pn_loss):
        values = np.asarray(fn(labels, x, margin=0.5))
        assert values[2] == 0.0 and np.all(np.isfinite(values))
    one_class = np.asarray(anchor_triplet_loss(np.zeros(4, "int32"), x[:4]))
    assert np.all(one_class == 0.0)


@pytest.mark.parametrize("pn", [False, True], ids=["triplet", "pn"])
def test_gradient_matches_finite_differences(pn):
    labels, x = _pk_batch(p=3, k=2, d=3, seed=4)
    fn = pn_loss if pn else anchor_triplet_loss

    def numpy_loss(e):
        return tfsim_reference(labels, e, "euclidean", "hard", "semi-hard", None, pn)

    got = backend_ops.grad(
        lambda e: keras.ops.mean(fn(labels, e, distance="euclidean", margin=None)),
        x.astype("float64"),
    )
    np.testing.assert_allclose(got, numeric_gradient(numpy_loss, x), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("cls", [AnchorTripletLoss, PNLoss])
def test_config_round_trip_and_keras_file(cls, tmp_path):
    loss = cls(distance="euclidean", positive_mining="easy", negative_mining="hard", margin=None)
    config = loss.get_config()
    params = set(inspect.signature(cls).parameters)
    assert params <= set(config)
    assert cls.from_config(config).get_config() == config
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, jit_compile=True)
    labels, x = _pk_batch(p=4, k=4)
    history = model.fit(x, labels, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.loss.get_config() == config
    expected = tfsim_reference(
        labels, model.predict(x, verbose=0), "euclidean", "easy", "hard", None, cls is PNLoss
    )
    np.testing.assert_allclose(
        float(loaded.loss(labels, model.predict(x, verbose=0))), expected, rtol=1e-5
    )


@pytest.mark.tf_only  # inspects the TensorFlow graph
@pytest.mark.parametrize("fn", [anchor_triplet_loss, pn_loss], ids=["triplet", "pn"])
def test_memory_is_quadratic(fn):
    size = 13
    labels, x = _pk_batch(p=1, k=size)
    labels = np.arange(size) % 3

    def step(embeddings, labels):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            value = tf.reduce_mean(fn(labels, embeddings))
        return value, tape.gradient(value, embeddings)

    assert largest_tensor_elements(step, tf.constant(x), tf.constant(labels)) <= size * size


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="positive_mining"):
        AnchorTripletLoss(positive_mining="semi-hard")
    with pytest.raises(ValueError, match="negative_mining"):
        PNLoss(negative_mining="all")
    with pytest.raises(ValueError, match="margin"):
        tfmetric.losses.pn_loss([0, 0, 1, 1], np.zeros((4, 2)), margin=-1.0)
