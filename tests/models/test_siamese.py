import inspect
import json
import os
import re

import backend_ops
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import tfmetric
from tfmetric.losses import PairContrastiveLoss, pair_contrastive_loss, paired_distance
from tfmetric.models import SiameseModel


def _float64(x):
    return keras.ops.convert_to_numpy(x).astype(np.float64)


def _np_distance(a, b, name):
    """Textbook per-pair distances, float64, one row at a time."""
    out = []
    for u, v in zip(_float64(a), _float64(b), strict=True):
        if name == "euclidean":
            out.append(np.sqrt(np.sum((u - v) ** 2)))
        elif name == "squared_euclidean":
            out.append(np.sum((u - v) ** 2))
        elif name == "manhattan":
            out.append(np.sum(np.abs(u - v)))
        elif name == "cosine":
            out.append(1.0 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
        elif name == "inner_product":
            out.append(u @ v)
        elif name == "minkowski3":
            out.append(np.sum(np.abs(u - v) ** 3) ** (1 / 3))
    return np.array(out)


@pytest.mark.parametrize(
    "name", ["euclidean", "squared_euclidean", "manhattan", "cosine", "inner_product", "minkowski3"]
)
def test_paired_distance_matches_definition(name):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    distance = tfmetric.distances.Minkowski(3) if name == "minkowski3" else name
    got = keras.ops.convert_to_numpy(paired_distance(distance, a.astype("float32"), b.astype("float32")))
    np.testing.assert_allclose(got, _np_distance(a, b, name), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["euclidean", "cosine", "manhattan", "minkowski3"])
def test_paired_distance_has_finite_gradient_at_zero(name):
    distance = tfmetric.distances.Minkowski(3) if name == "minkowski3" else name
    ones = np.ones((3, 4), "float32")
    grad = backend_ops.grad(lambda x: ops.sum(paired_distance(distance, x, ones)), ones)
    assert np.all(np.isfinite(grad))


def test_paired_distance_custom_distance_uses_diagonal():
    class Doubled(tfmetric.distances.Manhattan):
        def pairwise(self, x, y):
            return 2.0 * super().pairwise(x, y)

    a, b = np.eye(3, dtype="float32"), np.zeros((3, 3), "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(paired_distance(Doubled(), a, b)), [2.0, 2.0, 2.0])


def test_pair_contrastive_loss_matches_hadsell():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=16)
    d = rng.uniform(0.0, 2.0, size=16)
    margin = 1.3
    # Hadsell et al. 2006 with Y=0 for similar; our label 1 = similar is 1 - Y.
    hadsell_y = 1 - labels
    hadsell = (1 - hadsell_y) * 0.5 * d**2 + hadsell_y * 0.5 * np.maximum(0, margin - d) ** 2
    expected = 2.0 * hadsell  # without the paper's 1/2, as TensorFlow Addons
    got = pair_contrastive_loss(labels, d.astype("float32"), margin=margin)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5, atol=1e-6)


def test_label_one_means_similar():
    # A close pair costs nothing when labelled similar (1) and a lot when labelled dissimilar.
    close = np.array([0.0], "float32")
    assert float(pair_contrastive_loss(np.array([1]), close)[0]) == 0.0
    assert float(pair_contrastive_loss(np.array([0]), close)[0]) == 1.0


def test_pair_contrastive_class_reduces_and_configs():
    loss = PairContrastiveLoss(margin=0.5, name="pc")
    labels, d = np.array([1.0, 0.0, 0.0]), np.array([[0.2], [0.1], [0.9]], "float32")
    expected = np.mean([0.04, 0.16, 0.0])
    np.testing.assert_allclose(float(loss(labels, d)), expected, rtol=1e-6)
    config = loss.get_config()
    assert set(inspect.signature(PairContrastiveLoss).parameters) <= set(config)
    clone = PairContrastiveLoss.from_config(config)
    assert clone.get_config() == config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": np.ones(3), "distances": np.ones((3, 2), "float32")}, "`distances`"),
        ({"labels": np.ones(4), "distances": np.ones(3, "float32")}, "`labels`"),
        ({"labels": np.ones(3), "distances": np.ones(3, "float32"), "margin": -1}, "margin"),
    ],
)
def test_pair_contrastive_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pair_contrastive_loss(**kwargs)


def _embedder(dim_in=6, dim_out=3):
    return keras.Sequential(
        [
            keras.Input((dim_in,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(dim_out),
        ]
    )


@keras.saving.register_keras_serializable(package="tfmetric_tests")
class TinyScorer(keras.layers.Layer):
    """sigmoid(b - w·|e1 - e2|): a per-pair probability, for tests only."""

    def build(self, e1_shape, e2_shape):
        self.w = self.add_weight(shape=(e1_shape[-1],), initializer="ones")
        self.b = self.add_weight(shape=(), initializer="zeros")

    def call(self, e1, e2):
        return ops.sigmoid(self.b - ops.sum(self.w * ops.abs(e1 - e2), axis=-1, keepdims=True))


def _scorers():
    return [("none", lambda: None), ("tiny", TinyScorer), ("weighted_l1", tfmetric.layers.WeightedL1)]


def test_outputs_are_distances_of_shared_embeddings():
    embedder = _embedder()
    model = SiameseModel(embedder, distance="manhattan")
    assert model.embedder is embedder
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(5, 6)).astype("float32"), rng.normal(size=(5, 6)).astype("float32")
    got = model.predict((x1, x2), verbose=0)
    expected = _np_distance(embedder(x1), embedder(x2), "manhattan")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert len(model.trainable_weights) == len(embedder.trainable_weights)


@pytest.mark.parametrize("scorer_name, make_scorer", _scorers())
def test_fit_with_jit_and_keras_round_trip(tmp_path, scorer_name, make_scorer):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = np.repeat(np.arange(4), 10)
    x += 2.0 * y[:, None]
    data = tfmetric.data.pair_dataset(x, y, batch_size=16, seed=0)
    scorer = make_scorer()
    model = SiameseModel(_embedder(), scorer=scorer)
    loss = PairContrastiveLoss() if scorer is None else keras.losses.BinaryCrossentropy()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, jit_compile=True)
    history = model.fit(data, steps_per_epoch=15, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]

    (x1, x2), _ = next(iter(data))
    before = model.predict((x1, x2), verbose=0)
    assert before.shape == (16,)
    if scorer is not None:
        assert np.all((before >= 0) & (before <= 1))
    path = os.path.join(tmp_path, "siamese.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SiameseModel)
    np.testing.assert_allclose(loaded.predict((x1, x2), verbose=0), before, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        loaded.embedder.predict(x1, verbose=0), model.embedder.predict(x1, verbose=0), rtol=1e-5
    )
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(
        model.get_config(), sort_keys=True
    )


def test_config_has_every_argument():
    model = SiameseModel(_embedder(), distance=tfmetric.distances.Minkowski(3), scorer=TinyScorer())
    config = model.get_config()
    assert {"embedder", "distance", "scorer"} <= set(config)
    clone = SiameseModel.from_config(config)
    assert clone.distance == tfmetric.distances.Minkowski(3)
    assert isinstance(clone.scorer, TinyScorer)


def test_head_is_a_deprecated_alias_of_scorer():
    scorer = TinyScorer()
    with pytest.warns(DeprecationWarning, match="scorer"):
        model = SiameseModel(_embedder(), head=scorer)
    assert model.scorer is scorer
    with pytest.warns(DeprecationWarning, match="scorer"):
        assert model.head is scorer
    with pytest.raises(ValueError, match="scorer"):
        SiameseModel(_embedder(), scorer=TinyScorer(), head=TinyScorer())
    # A configuration written before the rename (the scorer under "head") still loads.
    config = model.get_config()
    config["head"] = config.pop("scorer")
    clone = SiameseModel.from_config(config)
    assert isinstance(clone.scorer, TinyScorer)


class _BatchScorer(keras.layers.Layer):
    """Breaks the pair scorer contract: one value per embedding of both batches."""

    def call(self, e1, e2):
        return ops.concatenate([ops.sum(e1, axis=1), ops.sum(e2, axis=1)], axis=0)


def test_scorer_mixing_the_two_batches_is_a_clear_error():
    # Its symbolic output (None,) looks right; the traced batch of 3 pairs gives (6,).
    with pytest.raises(ValueError, match=r"`scorer` must return one value per pair.*\(6,\)"):
        SiameseModel(_embedder(), scorer=_BatchScorer())


@pytest.mark.parametrize("make", [tfmetric.layers.WeightedL1, tfmetric.layers.Mahalanobis])
def test_learned_distance_scorer_rejects_batches_of_different_sizes(make):
    with pytest.raises(ValueError, match="`x1` and `x2` must have the same batch size; got 3 and 2"):
        make()(np.ones((3, 4), "float32"), np.ones((2, 4), "float32"))


def test_bad_arguments():
    with pytest.raises(TypeError, match="embedder"):
        SiameseModel(lambda x: x)
    with pytest.raises(TypeError, match="scorer"):
        SiameseModel(_embedder(), scorer=lambda a, b: a)
    with pytest.raises(ValueError, match="distance"):
        SiameseModel(_embedder(), distance="nope")
    model = SiameseModel(_embedder())
    with pytest.raises(ValueError, match="inputs"):
        model(np.ones((2, 6), "float32"))


def _pairs(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=(n, 6)).astype("float32"), rng.normal(size=(n, 6)).astype("float32")
    return x1, x2, np.tile([1.0, 0.0], n // 2).astype("float32")


@pytest.mark.parametrize(
    "model_kwargs, loss, kind",
    [
        ({"scorer": tfmetric.layers.WeightedL1()}, PairContrastiveLoss(), "similarity"),
        ({"distance": "inner_product"}, PairContrastiveLoss(), "similarity"),
        ({"distance": "inner_product"}, pair_contrastive_loss, "similarity"),
        ({}, "binary_crossentropy", "distance"),
        ({"distance": "cosine"}, keras.losses.BinaryCrossentropy(), "distance"),
        ({"scorer": tfmetric.layers.Mahalanobis()}, keras.losses.BinaryFocalCrossentropy(), "distance"),
    ],
)
def test_loss_reading_scores_the_other_way_is_refused(model_kwargs, loss, kind):
    # A contrastive loss pulls similar pairs to small scores, binary cross-entropy to large
    # ones: on scores of the other direction, training would push similar pairs apart.
    model = SiameseModel(_embedder(), **model_kwargs)
    model.compile(optimizer="sgd", loss=loss)
    weights = [np.array(w) for w in model.get_weights()]
    x1, x2, same = _pairs()
    for run in (model.fit, model.evaluate):
        with pytest.raises(ValueError, match=f"returns {kind} scores.*push similar pairs apart"):
            run((x1, x2), same, verbose=0)
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    "model_kwargs, loss",
    [
        ({}, PairContrastiveLoss()),
        ({"scorer": tfmetric.layers.Mahalanobis()}, PairContrastiveLoss()),
        ({"scorer": tfmetric.layers.WeightedL1()}, "binary_crossentropy"),
        ({"scorer": TinyScorer()}, PairContrastiveLoss()),  # tells no direction: not judged
    ],
)
def test_loss_reading_scores_the_right_way_trains(model_kwargs, loss):
    model = SiameseModel(_embedder(), **model_kwargs)
    model.compile(optimizer="sgd", loss=loss)
    x1, x2, same = _pairs()
    history = model.fit((x1, x2), same, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("shape", [(8, 2), (8, 3), (2, 4)])
@pytest.mark.parametrize("loss", [PairContrastiveLoss(), "binary_crossentropy"])
def test_pair_labels_of_another_shape_are_refused(shape, loss):
    scorer = None if loss != "binary_crossentropy" else tfmetric.layers.WeightedL1()
    model = SiameseModel(_embedder(), scorer=scorer)
    model.compile(optimizer="sgd", loss=loss)
    x1, x2, _ = _pairs()
    labels = np.ones(shape, "float32")
    with pytest.raises(ValueError, match=r"`y` must hold one pair label per pair.*\(pairs,\)"):
        model.fit((x1, x2), labels, verbose=0)
    # The same labels in a dataset: refused when the step is traced.
    data = tf.data.Dataset.from_tensors(((x1, x2), np.ones((8, shape[1]), "float32")))
    with pytest.raises(ValueError, match=r"`y` must hold one pair label per pair"):
        model.fit(data, verbose=0)


@pytest.mark.tf_only
@pytest.mark.parametrize("scorer_name", ["distance", "weighted_l1"])
def test_pair_labels_of_unknown_rank_are_one_per_pair(scorer_name):
    x1, x2, same = _pairs(n=8, seed=3)
    if scorer_name == "distance":
        model = SiameseModel(_embedder())
        model.compile(optimizer="sgd", loss=PairContrastiveLoss(margin=2.0))
    else:
        model = SiameseModel(_embedder(), scorer=tfmetric.layers.WeightedL1())
        model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy())
    # Labels whose rank the pipeline does not know (a generator without static shapes).
    data = tf.data.Dataset.from_generator(
        lambda: iter([((x1, x2), same[:, None])]),
        output_signature=(
            (tf.TensorSpec((None, 6), tf.float32), tf.TensorSpec((None, 6), tf.float32)),
            tf.TensorSpec(None, tf.float32),
        ),
    )
    got = model.evaluate(data, verbose=0)
    scores = model.predict((x1, x2), verbose=0).astype(np.float64)
    if scorer_name == "distance":
        expected = np.mean(same * scores**2 + (1 - same) * np.maximum(2.0 - scores, 0.0) ** 2)
    else:
        expected = -np.mean(same * np.log(scores) + (1 - same) * np.log(1 - scores))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((8, 2, 6), r"pass `\(x\[:, 0\], x\[:, 1\]\)`"),
        ((8, 3, 6), r"would need shape \(N, 2, 6\): its second dimension is 3, not 2"),
        ((8, 6), r"each of shape \(N, 6\)"),
    ],
)
def test_one_array_for_the_two_branches_is_a_named_error(shape, match):
    model = SiameseModel(_embedder())
    model.compile(optimizer="sgd", loss=PairContrastiveLoss())
    x = np.ones(shape, "float32")
    for run in (
        lambda: model.fit(x, np.ones(8), verbose=0),
        lambda: model.evaluate(x, np.ones(8), verbose=0),
        lambda: model.predict(x, verbose=0),
    ):
        with pytest.raises(ValueError, match=r"`x` must be a tuple of 2 batches \(x1, x2\)") as info:
            run()
        assert re.search(match, str(info.value))
