"""Fuzz: every loss of `tfmetric.losses` (functions and classes) on hostile input.

The contract: a `ValueError`/`TypeError` naming the argument, or finite
per-sample values; the triplet and contrastive losses are checked against the
float64 references of `tests/references.py` at every magnitude from 1e-30 to
1e30, and cosine-based losses are checked to be scale-free.
"""

import math

import numpy as np
import pytest
import references
from fuzz_strategies import NON_FINITE, assert_names, examples
from hypothesis import assume, given
from hypothesis import strategies as st

from tfmetric import losses

# Functional in-batch losses: (function, keyword arguments, scale-free?).
IN_BATCH = [
    (losses.triplet_loss, {"mining": "semi-hard"}, False),
    (losses.triplet_loss, {"mining": "hard"}, False),
    (losses.triplet_loss, {"mining": "all"}, False),
    (losses.triplet_loss, {"mining": "easy", "soft_margin": True}, False),
    (losses.contrastive_loss, {}, False),
    (losses.lifted_structure_loss, {}, False),
    (losses.circle_loss, {}, True),
    (losses.multi_similarity_loss, {}, True),
    (losses.npairs_loss, {"distance": "cosine"}, True),
    (losses.npairs_loss, {}, False),
    (losses.nt_xent_loss, {}, True),
    (losses.supervised_contrastive_loss, {}, True),
    (losses.soft_nearest_neighbor_loss, {}, False),
    (losses.anchor_triplet_loss, {}, True),
    (losses.pn_loss, {}, True),
]
IN_BATCH_IDS = [f"{fn.__name__}{kwargs or ''}" for fn, kwargs, _ in IN_BATCH]

# The faults a batch may carry, and the argument whose error must name them.
FAULTS = {
    "empty": "embeddings",
    "no_features": "embeddings",
    "non_finite": "embeddings",
    "rank_1_embeddings": "embeddings",
    "integer_embeddings": "embeddings",
    "labels_length": "labels",
    "labels_rank": "labels",
    "fractional_labels": "labels",
    "huge_float_labels": "labels",
    "string_labels": "labels",
}


@st.composite
def labelled_batches(draw, fault=None, min_dim=1):
    """`(labels, embeddings)`: a small batch, with `fault` injected when given."""
    size = draw(st.integers(1, 6))
    dim = draw(st.integers(min_dim, 4))
    classes = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size)
    embeddings = rng.normal(size=(size, dim)).astype("float32")
    if fault == "empty":
        labels, embeddings = labels[:0], embeddings[:0]
    elif fault == "no_features":
        embeddings = embeddings[:, :0]
    elif fault == "non_finite":
        embeddings.flat[draw(st.integers(0, embeddings.size - 1))] = draw(st.sampled_from(NON_FINITE))
    elif fault == "rank_1_embeddings":
        embeddings = embeddings[:, 0]
    elif fault == "integer_embeddings":
        embeddings = embeddings.astype("int32")
    elif fault == "labels_length":
        labels = np.concatenate([labels, labels[:1]])
    elif fault == "labels_rank":
        labels = np.stack([labels, labels], axis=1)
    elif fault == "fractional_labels":
        labels = labels + 0.5
    elif fault == "huge_float_labels":
        labels = labels.astype("float64") * 2.0**70 + 2.0**70
    elif fault == "string_labels":
        labels = labels.astype(str)
    return labels, embeddings


@pytest.mark.parametrize(("fn", "kwargs", "scale_free"), IN_BATCH, ids=IN_BATCH_IDS)
@examples(5)
@given(data=st.data())
def test_faulty_batch_names_the_argument(fn, kwargs, scale_free, data):
    fault = data.draw(st.sampled_from(sorted(FAULTS)), label="fault")
    labels, embeddings = data.draw(labelled_batches(fault), label="batch")
    with pytest.raises((ValueError, TypeError)) as error:
        fn(labels, embeddings, **kwargs)
    assert_names(error.value, FAULTS[fault])


@pytest.mark.parametrize(("fn", "kwargs", "scale_free"), IN_BATCH, ids=IN_BATCH_IDS)
@examples(5)
@given(batch=labelled_batches(), exponent=st.integers(-30, 30))
def test_values_are_finite_at_every_magnitude(fn, kwargs, scale_free, batch, exponent):
    labels, embeddings = batch
    squared = kwargs.get("distance", "") == "inner_product" or fn in (
        losses.npairs_loss,
        losses.soft_nearest_neighbor_loss,
        losses.contrastive_loss,
    )
    scaled = embeddings * np.float32(10.0**exponent)
    if squared and exponent > 9:
        # Inner products, squared distances and squared hinge terms are squares of the
        # embeddings' magnitude: their true values leave float32 past about 1e19, where
        # an eager call must say so (naming `embeddings`) rather than return Inf.
        try:
            values = np.asarray(fn(labels, scaled, **kwargs))
        except ValueError as error:
            assert "`embeddings`" in str(error) and "overflowed" in str(error)
            return
        assert np.all(np.isfinite(values)), values
        return
    values = np.asarray(fn(labels, scaled, **kwargs))
    assert values.shape == (len(labels),)
    assert np.all(np.isfinite(values)), values
    if scale_free:
        unscaled = np.asarray(fn(labels, embeddings, **kwargs))
        np.testing.assert_allclose(values, unscaled, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mining", ["semi-hard", "hard", "all"])
@examples(8)
@given(batch=labelled_batches(), exponent=st.integers(-30, 30))
def test_triplet_loss_matches_the_float64_reference(mining, batch, exponent):
    labels, embeddings = batch
    scale = 10.0**exponent
    scaled = embeddings * np.float32(scale)
    got = float(np.mean(np.asarray(losses.triplet_loss(labels, scaled, mining=mining))))
    expected = references.triplet(labels, scaled.astype(np.float64), mining=mining)
    # Distances carry an error relative to the largest magnitude (the margin 1 is exact).
    atol = 2e-3 * max(1.0, float(np.abs(scaled).max())) * math.sqrt(embeddings.shape[1])
    assert got == pytest.approx(expected, rel=1e-3, abs=atol)


@examples(8)
@given(batch=labelled_batches(), exponent=st.integers(-30, 9))
def test_contrastive_loss_matches_the_float64_reference(batch, exponent):
    labels, embeddings = batch
    scaled = embeddings * np.float32(10.0**exponent)
    got = float(np.mean(np.asarray(losses.contrastive_loss(labels, scaled))))
    expected = references.contrastive(labels, scaled.astype(np.float64))
    peak = max(1.0, float(np.abs(scaled).max()))
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-2 * peak**2 * embeddings.shape[1])


# Numeric arguments of every loss class: (class, argument).
ARGUMENTS = [
    (losses.TripletLoss, "margin"),
    (losses.ContrastiveLoss, "margin"),
    (losses.LiftedStructureLoss, "margin"),
    (losses.CircleLoss, "margin"),
    (losses.CircleLoss, "gamma"),
    (losses.MultiSimilarityLoss, "alpha"),
    (losses.MultiSimilarityLoss, "beta"),
    (losses.MultiSimilarityLoss, "base"),
    (losses.MultiSimilarityLoss, "epsilon"),
    (losses.NTXentLoss, "temperature"),
    (losses.SupervisedContrastiveLoss, "temperature"),
    (losses.SoftNearestNeighborLoss, "temperature"),
    (losses.AnchorTripletLoss, "margin"),
    (losses.PNLoss, "margin"),
    (losses.TripletMarginLoss, "margin"),
    (losses.PairContrastiveLoss, "margin"),
]
HOSTILE_NUMBERS = st.one_of(
    st.sampled_from(
        [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-50, 1e-39, 1e-30, 1e-6, 1e6, 1e19,
         1e30, 1e38, 1e39, 2.0**70]
    ),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([True, "1", None, [1.0]]),
)


def _triplets(embeddings):
    return np.stack([embeddings, 0.5 * embeddings, -embeddings], axis=1)


def _call(loss, batch):
    labels, embeddings = batch
    if isinstance(loss, losses.TripletMarginLoss):
        return loss(None, _triplets(embeddings))
    if isinstance(loss, losses.PairContrastiveLoss):
        return loss((labels % 2).astype("float32"), np.abs(embeddings[:, 0]))
    return loss(labels, embeddings)


@pytest.mark.parametrize(("cls", "argument"), ARGUMENTS, ids=lambda a: getattr(a, "__name__", a))
@examples(8)
@given(value=HOSTILE_NUMBERS, batch=labelled_batches())
def test_numeric_arguments_are_rejected_or_give_finite_losses(cls, argument, value, batch):
    try:
        loss = cls(**{argument: value})
    except (ValueError, TypeError) as error:
        assert_names(error, argument)
        return
    assume(isinstance(value, float))
    value = np.asarray(_call(loss, batch))
    assert np.all(np.isfinite(value)), (argument, value)


@pytest.mark.parametrize(
    "loss",
    [losses.TripletLoss(), losses.CircleLoss(), losses.PairContrastiveLoss(),
     losses.TripletMarginLoss()],
    ids=lambda loss: type(loss).__name__,
)
@examples(4)
@given(batch=labelled_batches(), kind=st.sampled_from(["short", "long", "rank_2", "nan"]))
def test_sample_weight_errors_name_it(loss, batch, kind):
    size = len(batch[0])
    weights = {
        "short": np.ones(size + 1),
        "long": np.ones(size + 2),
        "rank_2": np.ones((size, 2)),
        "nan": np.where(np.arange(size) == 0, np.nan, 1.0),
    }[kind]
    with pytest.raises(ValueError) as error:
        _call_weighted(loss, batch, weights)
    assert_names(error.value, "sample_weight")


def _call_weighted(loss, batch, weights):
    labels, embeddings = batch
    if isinstance(loss, losses.TripletMarginLoss):
        return loss(None, _triplets(embeddings), sample_weight=weights)
    if isinstance(loss, losses.PairContrastiveLoss):
        return loss((labels % 2).astype("float32"), np.abs(embeddings[:, 0]), sample_weight=weights)
    return loss(labels, embeddings, sample_weight=weights)


HOSTILE_VALUES = [math.nan, math.inf, -math.inf, -1.0, -1e38, 0.0, 1e-50, 1e-39, 1e-30, 1e-6,
                  1e6, 1e19, 1e30, 1e38, 1e39, 2.0**70]


@pytest.mark.parametrize(("cls", "argument"), ARGUMENTS, ids=lambda a: getattr(a, "__name__", a))
def test_every_hostile_value_is_rejected_or_gives_finite_losses(cls, argument):
    """The values that pass a float64 check but not a float32 one, each of them."""
    rng = np.random.default_rng(0)
    batch = (np.array([0, 0, 1, 1, 2, 2]), rng.normal(size=(6, 3)).astype("float32"))
    for value in HOSTILE_VALUES:
        try:
            loss = cls(**{argument: value})
        except ValueError as error:
            assert_names(error, argument)
            continue
        assert math.isfinite(value) and abs(value) <= 1e30, value
        result = np.asarray(_call(loss, batch))
        assert np.all(np.isfinite(result)), (value, result)
