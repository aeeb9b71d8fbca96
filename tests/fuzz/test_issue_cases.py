"""The hostile-input cases of the numeric half of issue 17, rerun one by one.

Each was a NaN, a silently wrong value or an unhelpful error; each is now a
`ValueError` naming the argument or a value checked against a float64
reference.
"""

import inspect

import fuzz_references
import keras
import numpy as np
import pytest
import references

import tfmetric
from tfmetric import distances, layers, losses, metrics

RNG = np.random.default_rng(17)
E = RNG.normal(size=(8, 4)).astype("float32")
LABELS = np.arange(8) % 4
D0 = np.zeros((8, 0), "float32")


def _raises(call, argument, error=ValueError):
    with pytest.raises(error) as info:
        call()
    assert f"`{argument}`" in str(info.value), str(info.value)


def test_nan_row_is_an_error_not_distance_zero():
    _raises(lambda: distances.get("euclidean")([[np.nan, 0.0]], [[1.0, 0.0]]), "x")
    _raises(lambda: distances.get("euclidean")([[1.0, 0.0]], [[np.nan, 0.0]]), "y")


def test_nan_row_in_a_siamese_model_is_an_error_not_distance_zero():
    embedder = keras.Sequential([keras.Input((2,)), keras.layers.Identity()])
    model = tfmetric.models.SiameseModel(embedder)
    pairs = [np.array([[np.nan, 0.0], [0.0, 0.0]]), np.array([[1.0, 0.0], [3.0, 4.0]])]
    with pytest.raises(ValueError, match="NaN"):
        model(pairs)  # eager: values are checked
    predicted = model.predict(pairs, verbose=0)  # traced: NaN comes out as NaN, never 0
    assert np.isnan(predicted[0]).all() and predicted[1] == pytest.approx(5.0)


@pytest.mark.parametrize("scale", [1e19, 1e30])
@pytest.mark.parametrize("mining", ["semi-hard", "hard", "all"])
def test_triplet_loss_at_huge_magnitudes(scale, mining):
    values = np.asarray(losses.triplet_loss(LABELS, E * np.float32(scale), mining=mining))
    assert np.all(np.isfinite(values))
    expected = references.triplet(LABELS, E.astype(np.float64) * scale, mining=mining)
    np.testing.assert_allclose(np.mean(values), expected, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e19, 1e30])
def test_precision_at_1_is_scale_free(scale):
    expected = fuzz_references.precision_at_1(E, LABELS)
    assert metrics.precision_at_1(E, LABELS) == pytest.approx(expected)
    assert metrics.precision_at_1(E * np.float32(scale), LABELS) == pytest.approx(expected)


def test_exact_index_at_1e30_finds_each_id_once():
    index = tfmetric.index.ExactIndex()
    index.add(E * np.float32(1e30), ids=np.arange(8))
    ids, found, _ = index.search(E[:3] * np.float32(1e30), k=8)
    for row in range(3):
        assert sorted(ids[row].tolist()) == list(range(8))
        expected = fuzz_references.pairwise(E[row : row + 1] * 1e30, E * 1e30, "euclidean")[0]
        np.testing.assert_allclose(found[row], np.sort(expected), rtol=1e-4, atol=1e27)


@pytest.mark.parametrize("scale", [1e-30, 1e-7, 1e30])
def test_cosine_is_scale_free(scale):
    x = np.array([[1.0, 0.0]], "float32") * np.float32(scale)
    y = np.array([[1.0, 1.0]], "float32") * np.float32(scale)
    np.testing.assert_allclose(np.asarray(distances.Cosine()(x, y)), [[1 - 1 / np.sqrt(2)]], 1e-6)


def test_minkowski_infinity_is_chebyshev_and_large_p_does_not_overflow():
    x, y = [[0.0, 0.0]], [[4.0, 1.0]]
    assert np.asarray(distances.Minkowski(p=float("inf"))(x, y)).tolist() == [[4.0]]
    expected = (4.0**100 + 1.0) ** 0.01
    np.testing.assert_allclose(np.asarray(distances.Minkowski(p=100)(x, y)), [[expected]], 1e-6)
    x, y = np.array(x, "float32") * 1e30, np.array(y, "float32") * 1e30
    np.testing.assert_allclose(np.asarray(distances.Minkowski(p=100)(x, y)), [[4e30]], 1e-6)


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: layers.ArcFace(num_classes=3, scale=1e39), "scale"),
        (lambda: layers.CosFace(num_classes=3, margin=1e39), "margin"),
        (lambda: losses.NTXentLoss(temperature=1e-50), "temperature"),
        (lambda: losses.nt_xent_loss(LABELS, E, temperature=1e-50), "temperature"),
        (lambda: losses.MultiSimilarityLoss(base=float("inf")), "base"),
        (lambda: losses.TripletLoss(margin=1e39), "margin"),
        (lambda: losses.triplet_loss(LABELS, E, margin=1e39), "margin"),
        (lambda: layers.InBatchLogits(temperature=1e-50), "temperature"),
        (lambda: losses.momentum_contrast_loss(E, E, E, temperature=1e-50), "temperature"),
    ],
)
def test_arguments_are_checked_in_float32(build, argument):
    _raises(build, argument)


LOSS_FUNCTIONS = [
    getattr(losses, name)
    for name in losses.__all__
    if inspect.isfunction(getattr(losses, name))
    and list(inspect.signature(getattr(losses, name)).parameters)[:2] == ["labels", "embeddings"]
]


@pytest.mark.parametrize("fn", LOSS_FUNCTIONS, ids=lambda fn: fn.__name__)
def test_zero_dimensional_embeddings_rejected_by_every_loss(fn):
    _raises(lambda: fn(LABELS, D0), "embeddings")


HEADS = [
    lambda: layers.ArcFace(4),
    lambda: layers.CosFace(4),
    lambda: layers.SubCenterArcFace(4),
    lambda: layers.NormalizedSoftmax(4),
    lambda: layers.ProxyAnchor(4),
    lambda: layers.ProxyNCA(4),
]


@pytest.mark.parametrize("make", HEADS)
def test_zero_dimensional_embeddings_rejected_by_every_head(make):
    _raises(lambda: make()(D0, LABELS), "embeddings")


@pytest.mark.parametrize("make", HEADS)
def test_head_with_different_batch_sizes_names_both_arguments(make):
    with pytest.raises(ValueError) as info:
        make()(E, LABELS[:5])
    assert "`labels`" in str(info.value) and "`embeddings`" in str(info.value)


@pytest.mark.parametrize("bad", [2.0, -1.0])
def test_pair_contrastive_labels_must_be_0_or_1(bad):
    labels = np.array([1.0, bad])
    _raises(lambda: losses.pair_contrastive_loss(labels, np.array([0.5, 0.3])), "labels")
    _raises(lambda: losses.PairContrastiveLoss()(labels, np.array([0.5, 0.3])), "y_true")


def test_float_labels_too_large_to_tell_apart():
    labels = np.array([2.0**70, 2.0**71, 2.0**70, 2.0**71])
    _raises(lambda: losses.triplet_loss(labels, E[:4]), "labels")
    _raises(lambda: losses.TripletLoss()(labels, E[:4]), "y_true")
    _raises(lambda: losses.triplet_loss(labels.astype("float32"), E[:4]), "labels")


@pytest.mark.parametrize(
    "loss",
    [losses.TripletLoss(), losses.ContrastiveLoss(), losses.MultiSimilarityLoss()],
    ids=lambda loss: type(loss).__name__,
)
@pytest.mark.parametrize("weights", [np.ones(3), np.ones((8, 2)), np.array([1.0] * 7 + [np.nan])])
def test_sample_weight_of_the_wrong_length_or_nan(loss, weights):
    _raises(lambda: loss(LABELS, E, sample_weight=weights), "sample_weight")


@pytest.mark.parametrize("name", ["contrastive_loss", "npairs_loss"])
def test_a_loss_that_overflows_float32_says_so_eagerly(name):
    # Squares of 1e20-sized embeddings exceed float32: an eager call raises naming
    # `embeddings` (was: Inf or NaN returned silently); the class form too.
    labels = np.repeat(np.arange(4), 2)
    embeddings = np.random.default_rng(0).normal(size=(8, 4)).astype("float32") * np.float32(1e20)
    fn = getattr(tfmetric.losses, name)
    with pytest.raises(ValueError, match="overflowed float32 for these `embeddings`"):
        fn(labels, embeddings)
    assert np.all(np.isfinite(np.asarray(fn(labels, embeddings * np.float32(1e-20)))))
    if name == "contrastive_loss":
        with pytest.raises(ValueError, match="`embeddings`"):
            tfmetric.losses.ContrastiveLoss()(labels, embeddings)
