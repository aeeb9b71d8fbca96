"""Reductions of the in-batch losses mean what Keras documents.

A loss is a mean over terms (triplets, pairs, valid anchors); `reduction="none"`
gives each sample's sum of terms `v_i`, and with the anchor's number of terms
`c_i` and sample weights `w_i`: `"sum"` is `sum(w v)`, `"sum_over_batch_size"`
`sum(w v) / sum(c)` (the documented loss when unweighted) and
`"mean_with_sample_weight"` `sum(w v) / sum(w c)`. The references below are
written from the definitions (FaceNet / Hermans et al. triplets, Hadsell et al.
contrastive); the identities are checked for every in-batch loss.
"""

import inspect

import keras
import numpy as np
import pytest
from references import pairwise

import tfmetric
from tfmetric.losses.batch import InBatchLoss

# Unequal classes and a singleton (an anchor without positives).
LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
X = np.random.default_rng(7).normal(size=(len(LABELS), 3)).astype("float32")
WEIGHTS = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0, 1.0, 0.25, 2.0, 1.0], "float32")

IN_BATCH_LOSSES = sorted(
    {
        cls
        for cls in vars(tfmetric.losses).values()
        if inspect.isclass(cls) and issubclass(cls, InBatchLoss) and cls is not InBatchLoss
    },
    key=lambda cls: cls.__name__,
)


def triplet_terms(labels, x, margin, mining, soft=False):
    """Per-anchor sums of triplet terms and their counts, from the definitions."""
    d = pairwise(x, x, "euclidean")
    n = len(labels)
    values, counts = np.zeros(n), np.zeros(n)

    def term(gap):
        return np.log1p(np.exp(gap)) if soft else max(gap + margin, 0.0)

    for a in range(n):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [q for q in range(n) if labels[q] != labels[a]]
        if not positives or not negatives:
            continue
        if mining == "hard":
            values[a] = term(max(d[a, positives]) - min(d[a, negatives]))
            counts[a] = 1
        elif mining == "semi-hard":
            for p in positives:
                farther = [d[a, q] for q in negatives if d[a, q] > d[a, p]]
                values[a] += term(d[a, p] - (min(farther) if farther else max(d[a, negatives])))
            counts[a] = len(positives)
        else:
            terms = [term(d[a, p] - d[a, q]) for p in positives for q in negatives]
            values[a] = sum(terms)
            counts[a] = len(terms) if soft else sum(t > 0 for t in terms)
    return values, counts


def contrastive_terms(labels, x, margin):
    d = pairwise(x, x, "euclidean")
    same = labels[:, None] == labels[None, :]
    cost = np.where(same, d**2, np.maximum(margin - d, 0.0) ** 2)
    np.fill_diagonal(cost, 0.0)
    return cost.sum(axis=1), np.full(len(labels), len(labels) - 1.0)


CASES = [
    (tfmetric.losses.TripletLoss, {"mining": mining, "margin": 1.0, "soft_margin": soft},
     lambda mining=mining, soft=soft: triplet_terms(LABELS, X, 1.0, mining, soft))
    for mining, soft in [("hard", False), ("semi-hard", False), ("all", False), ("all", True)]
] + [
    (tfmetric.losses.ContrastiveLoss, {"margin": 1.0},
     lambda: contrastive_terms(LABELS, X, 1.0)),
]  # fmt: skip


@pytest.mark.parametrize("cls, kwargs, reference", CASES)
def test_every_reduction_matches_the_reference(cls, kwargs, reference):
    values, counts = reference()
    assert counts.sum() > 0 and (counts == 0).any() or cls is tfmetric.losses.ContrastiveLoss
    expected = {
        "none": WEIGHTS * values,
        "sum": np.sum(WEIGHTS * values),
        "sum_over_batch_size": np.sum(WEIGHTS * values) / counts.sum(),
        "mean": np.sum(WEIGHTS * values) / counts.sum(),
        "mean_with_sample_weight": np.sum(WEIGHTS * values) / np.sum(WEIGHTS * counts),
    }
    for reduction, want in expected.items():
        got = cls(reduction=reduction, **kwargs)(LABELS, X, sample_weight=WEIGHTS)
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6, err_msg=reduction)
    unweighted = cls(**kwargs)(LABELS, X)
    assert float(unweighted) == pytest.approx(values.sum() / counts.sum(), rel=2e-5)
    none = cls(reduction=None, **kwargs)(LABELS, X)
    np.testing.assert_allclose(np.asarray(none), values, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("cls", IN_BATCH_LOSSES, ids=lambda cls: cls.__name__)
def test_reductions_are_consistent_for_every_loss(cls):
    none = np.asarray(cls(reduction="none")(LABELS, X), np.float64)
    assert none.shape == (len(LABELS),)
    weighted = np.asarray(cls(reduction="none")(LABELS, X, sample_weight=WEIGHTS), np.float64)
    np.testing.assert_allclose(weighted, WEIGHTS * none, rtol=1e-5, atol=1e-6)
    summed = float(cls(reduction="sum")(LABELS, X, sample_weight=WEIGHTS))
    assert summed == pytest.approx(np.sum(WEIGHTS * none), rel=1e-5, abs=1e-6)
    # The default reduction is the functional form's mean (tested against the papers).
    mean = float(cls()(LABELS, X))
    functional = keras.ops.convert_to_numpy(cls.fn(LABELS, X, **_arguments(cls)))
    assert mean == pytest.approx(float(np.mean(functional)), rel=1e-5)
    # Uniform weights leave the weighted mean at the loss; scaling all weights changes nothing.
    for weights in (np.ones_like(WEIGHTS), np.full_like(WEIGHTS, 3.0)):
        value = float(cls(reduction="mean_with_sample_weight")(LABELS, X, sample_weight=weights))
        assert value == pytest.approx(mean, rel=1e-5, abs=1e-7)
    # Sample weights of shape (B, 1) and scalars broadcast as in Keras.
    column = float(cls(reduction="sum")(LABELS, X, sample_weight=WEIGHTS[:, None]))
    assert column == pytest.approx(summed, rel=1e-5, abs=1e-6)
    doubled = float(cls()(LABELS, X, sample_weight=2.0))
    assert doubled == pytest.approx(2.0 * mean, rel=1e-5, abs=1e-7)


def _arguments(cls):
    loss = cls()
    return dict(distance=loss.distance, **loss._loss_arguments())
