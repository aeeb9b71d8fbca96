"""Fuzz: the evaluation functions of `tfmetric.metrics` on hostile input.

The contract: a `ValueError`/`TypeError` naming the argument, or a finite
value; precision@1, ROC AUC and paired distances are checked against float64
references at every magnitude from 1e-30 to 1e30.
"""

import math

import fuzz_references
import numpy as np
import pytest
from fuzz_strategies import NON_FINITE, assert_names, examples
from hypothesis import assume, given
from hypothesis import strategies as st

from tfmetric import metrics

RETRIEVAL = [
    metrics.precision_at_1,
    metrics.r_precision,
    metrics.map_at_r,
    metrics.mean_average_precision,
    metrics.mean_reciprocal_rank,
    metrics.recall_at_k,
]
FAULTS = {
    "empty": "query",
    "no_features": "query",
    "non_finite": "query",
    "rank_1": "query",
    "labels_length": "query_labels",
    "labels_rank": "query_labels",
    "fractional_labels": "query_labels",
    "huge_float_labels": "query_labels",
    "string_labels": "query_labels",
    "gallery_dim": "gallery",
    "gallery_non_finite": "gallery",
}


@st.composite
def retrieval_batches(draw, fault=None):
    size = draw(st.integers(2, 8))
    dim = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = rng.integers(0, draw(st.integers(1, 3)), size)
    query = rng.normal(size=(size, dim)).astype("float32")
    kwargs = {}
    if fault == "empty":
        query, labels = query[:0], labels[:0]
    elif fault == "no_features":
        query = query[:, :0]
    elif fault == "non_finite":
        query.flat[draw(st.integers(0, query.size - 1))] = draw(st.sampled_from(NON_FINITE))
    elif fault == "rank_1":
        query = query[:, 0]
    elif fault == "labels_length":
        labels = labels[:-1]
    elif fault == "labels_rank":
        labels = np.stack([labels, labels], axis=1)
    elif fault == "fractional_labels":
        labels = labels + 0.5
    elif fault == "huge_float_labels":
        labels = labels * 2.0**70 + 2.0**70
    elif fault == "string_labels":
        labels = labels.astype(str)
    elif fault in ("gallery_dim", "gallery_non_finite"):
        gallery = rng.normal(size=(size, dim + (fault == "gallery_dim"))).astype("float32")
        if fault == "gallery_non_finite":
            gallery[0, 0] = np.nan
        kwargs = {"gallery": gallery, "gallery_labels": rng.integers(0, 2, size)}
    return query, labels, kwargs


@pytest.mark.parametrize("fn", RETRIEVAL, ids=lambda fn: fn.__name__)
@examples(6)
@given(data=st.data())
def test_retrieval_on_faulty_input_names_the_argument(fn, data):
    fault = data.draw(st.sampled_from(sorted(FAULTS)), label="fault")
    query, labels, kwargs = data.draw(retrieval_batches(fault), label="batch")
    with pytest.raises((ValueError, TypeError)) as error:
        fn(query, labels, **kwargs)
    assert_names(error.value, FAULTS[fault], "labels", "embeddings")


@examples(8)
@given(batch=retrieval_batches(), exponent=st.integers(-30, 30))
def test_precision_at_1_matches_the_reference_at_every_magnitude(batch, exponent):
    query, labels, _ = batch
    assume(any(np.sum(labels == label) > 1 for label in labels))
    scaled = query * np.float32(10.0**exponent)
    expected = fuzz_references.precision_at_1(scaled, labels)
    assert metrics.precision_at_1(scaled, labels) == pytest.approx(expected)


@pytest.mark.parametrize("fn", RETRIEVAL[1:], ids=lambda fn: fn.__name__)
@examples(5)
@given(batch=retrieval_batches(), exponent=st.integers(-30, 30))
def test_retrieval_scores_are_scale_free(fn, batch, exponent):
    query, labels, _ = batch
    assume(any(np.sum(labels == label) > 1 for label in labels))
    value = fn(query * np.float32(10.0**exponent), labels)
    assert math.isfinite(value) and 0.0 <= value <= 1.0
    assert value == pytest.approx(fn(query, labels), abs=1e-6)


def _auc_reference(same, scores):
    """P(a same pair scores closer than a different pair), ties counted half (distances)."""
    positive, negative = scores[same], scores[~same]
    closer = (positive[:, None] < negative[None, :]).mean()
    tied = (positive[:, None] == negative[None, :]).mean()
    return closer + 0.5 * tied


@examples(10)
@given(
    size=st.integers(2, 12),
    seed=st.integers(0, 2**32 - 1),
    exponent=st.integers(-30, 30),
)
def test_roc_auc_matches_the_reference(size, seed, exponent):
    rng = np.random.default_rng(seed)
    same = np.arange(size) % 2 == 0
    scores = np.abs(rng.normal(size=size)) * 10.0**exponent
    assert metrics.roc_auc(same, scores) == pytest.approx(_auc_reference(same, scores))


VERIFICATION = [metrics.roc_auc, metrics.equal_error_rate, metrics.tar_at_far, metrics.best_threshold]


@pytest.mark.parametrize("fn", VERIFICATION, ids=lambda fn: fn.__name__)
@examples(8)
@given(
    fault=st.sampled_from(["same_values", "same_dtype", "one_kind", "length", "nan", "rank"]),
    size=st.integers(2, 6),
)
def test_verification_on_faulty_input_names_the_argument(fn, fault, size):
    same = np.arange(size) % 2
    scores = np.linspace(0.0, 1.0, size)
    argument = "same"
    if fault == "same_values":
        same = same * 2 - 1
    elif fault == "same_dtype":
        same = same.astype(str)
    elif fault == "one_kind":
        same = np.ones(size, int)
    elif fault == "length":
        scores, argument = scores[:-1], "scores"
    elif fault == "nan":
        scores[0], argument = np.nan, "scores"
    elif fault == "rank":
        same = same[:, None] * np.ones((1, 2), int)
    with pytest.raises((ValueError, TypeError)) as error:
        fn(same, scores)
    assert_names(error.value, argument)


@examples(8)
@given(rows=st.integers(1, 5), dim=st.integers(1, 4), exponent=st.integers(-30, 30),
       seed=st.integers(0, 2**32 - 1))
def test_paired_distances_match_the_reference(rows, dim, exponent, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(rows, dim)) * 10.0**exponent).astype("float32")
    y = (rng.normal(size=(rows, dim)) * 10.0**exponent).astype("float32")
    expected = np.diagonal(fuzz_references.pairwise(x, y, "euclidean"))
    np.testing.assert_allclose(metrics.paired_distances(x, y), expected, rtol=1e-5)


@examples(8)
@given(
    argument=st.sampled_from(["n_way", "k_shot", "episodes", "queries_per_class"]),
    value=st.sampled_from([0, -1, 1.5, True, "2", None, 10**6]),
)
def test_few_shot_arguments_are_checked(argument, value):
    assume(not (argument == "episodes" and value == 10**6))  # valid, merely long
    rng = np.random.default_rng(0)
    embeddings, labels = rng.normal(size=(12, 3)).astype("float32"), np.arange(12) % 3
    kwargs = {"n_way": 2, "k_shot": 1, "episodes": 3, argument: value}
    with pytest.raises((ValueError, TypeError)) as error:
        metrics.n_way_k_shot_accuracy(embeddings, labels, **kwargs)
    # A valid but too large value is an error about what `labels` holds.
    assert_names(error.value, argument, *(["labels"] if value == 10**6 else []))


@examples(5)
@given(batch=retrieval_batches(), exponent=st.integers(-30, 30))
def test_few_shot_and_clustering_are_finite_at_every_magnitude(batch, exponent):
    query, labels, _ = batch
    assume(len(np.unique(labels)) >= 2 and np.bincount(labels).min() >= 2)
    scaled = query * np.float32(10.0**exponent)
    accuracy, _ = metrics.n_way_k_shot_accuracy(scaled, labels, n_way=2, k_shot=1, episodes=3)
    assert 0.0 <= accuracy <= 1.0
    unscaled, _ = metrics.n_way_k_shot_accuracy(query, labels, n_way=2, k_shot=1, episodes=3)
    assert accuracy == unscaled
    scores = metrics.clustering_scores(scaled, labels)
    assert all(math.isfinite(value) for value in scores.values()), scores


@examples(6)
@given(fault=st.sampled_from(sorted(set(FAULTS) - {"gallery_dim", "gallery_non_finite"})))
def test_clustering_on_faulty_input_names_the_argument(fault):
    query, labels, _ = _fixed_batch(fault)
    with pytest.raises((ValueError, TypeError)) as error:
        metrics.clustering_scores(query, labels)
    assert_names(error.value, "embeddings", "labels")


def _fixed_batch(fault):
    rng = np.random.default_rng(0)
    labels = np.arange(6) % 2
    query = rng.normal(size=(6, 3)).astype("float32")
    return {
        "empty": (query[:0], labels[:0]),
        "no_features": (query[:, :0], labels),
        "non_finite": (np.where(query > 1.0, np.inf, query), labels),
        "rank_1": (query[:, 0], labels),
        "labels_length": (query, labels[:-1]),
        "labels_rank": (query, np.stack([labels, labels], axis=1)),
        "fractional_labels": (query, labels + 0.5),
        "huge_float_labels": (query, labels * 2.0**70 + 2.0**70),
        "string_labels": (query, labels.astype(str)),
    }[fault] + ({},)
