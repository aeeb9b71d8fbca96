"""SupCon (Khosla et al. 2020) and NT-Xent (Chen et al. 2020) against loop references."""

import backend_ops
import keras
import numpy as np
import pytest
from references import numeric_gradient

import tfmetric

LABELS = [
    np.array([0, 0, 0, 1, 1, 2, 2, 2, 3]),
    np.array([4, 1, 4, 1, 7, 4, 1, 9]),
]


def similarity(x, distance):
    if distance == "cosine":
        n = x / np.linalg.norm(x, axis=1, keepdims=True)
        return n @ n.T
    if distance == "inner_product":
        return x @ x.T
    return -np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def supcon_reference(labels, x, temperature, distance):
    """Eq. 2 of Khosla et al. (L_out), averaged over anchors with a positive."""
    z = similarity(x.astype(np.float64), distance) / temperature
    b = len(labels)
    losses = []
    for i in range(b):
        pos = [p for p in range(b) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denominator = sum(np.exp(z[i, a]) for a in range(b) if a != i)
        losses.append(-np.mean([np.log(np.exp(z[i, p]) / denominator) for p in pos]))
    return np.mean(losses)


def nt_xent_reference(labels, x, temperature, distance):
    """SimCLR's l(i, j) over every ordered positive pair, with in-batch negatives."""
    z = similarity(x.astype(np.float64), distance) / temperature
    b = len(labels)
    losses = []
    for i in range(b):
        for p in range(b):
            if p == i or labels[p] != labels[i]:
                continue
            negatives = sum(np.exp(z[i, n]) for n in range(b) if labels[n] != labels[i])
            losses.append(-np.log(np.exp(z[i, p]) / (np.exp(z[i, p]) + negatives)))
    return np.mean(losses)


CASES = [
    {},
    {"temperature": 0.5},
    {"temperature": 2.0, "distance": "euclidean"},
    {"temperature": 1.0, "distance": "inner_product"},
]


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("kwargs", CASES)
def test_supcon_matches_reference(labels, kwargs):
    rng = np.random.default_rng(len(labels))
    x = rng.normal(size=(len(labels), 5)).astype("float32")
    args = {"temperature": 0.1, "distance": "cosine"}
    args.update(kwargs)
    expected = supcon_reference(labels, x, **args)
    values = tfmetric.losses.supervised_contrastive_loss(labels, x, **args)
    np.testing.assert_allclose(np.mean(keras.ops.convert_to_numpy(values)), expected, rtol=1e-4, atol=1e-5)
    loss = tfmetric.losses.SupervisedContrastiveLoss(**args)
    np.testing.assert_allclose(float(loss(labels, x)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("kwargs", CASES)
def test_nt_xent_matches_reference(labels, kwargs):
    rng = np.random.default_rng(len(labels))
    x = rng.normal(size=(len(labels), 5)).astype("float32")
    args = {"temperature": 0.1, "distance": "cosine"}
    args.update(kwargs)
    expected = nt_xent_reference(labels, x, **args)
    values = tfmetric.losses.nt_xent_loss(labels, x, **args)
    np.testing.assert_allclose(np.mean(keras.ops.convert_to_numpy(values)), expected, rtol=1e-4, atol=1e-5)
    loss = tfmetric.losses.NTXentLoss(**args)
    np.testing.assert_allclose(float(loss(labels, x)), expected, rtol=1e-4, atol=1e-5)


def test_two_views_per_label_supcon_equals_nt_xent():
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    supcon = tfmetric.losses.supervised_contrastive_loss(labels, x, temperature=0.2)
    nt_xent = tfmetric.losses.nt_xent_loss(labels, x, temperature=0.2)
    supcon, nt_xent = (np.mean(keras.ops.convert_to_numpy(v)) for v in (supcon, nt_xent))
    np.testing.assert_allclose(supcon, nt_xent, rtol=1e-5)
    np.testing.assert_allclose(nt_xent, nt_xent_reference(labels, x, 0.2, "cosine"), rtol=1e-4)


def test_gradient_matches_finite_differences():
    labels = LABELS[0]
    x = np.random.default_rng(11).normal(size=(len(labels), 3)).astype("float32")
    grad = backend_ops.grad(lambda e: keras.ops.mean(tfmetric.losses.supervised_contrastive_loss(labels, e, **{"temperature": 0.5})), x)
    numeric = numeric_gradient(lambda e: supcon_reference(labels, e, 0.5, "cosine"), x.astype(np.float64))
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)


def test_nt_xent_gradient_matches_finite_differences():
    labels = LABELS[1]
    x = np.random.default_rng(12).normal(size=(len(labels), 3)).astype("float32")
    grad = backend_ops.grad(lambda e: keras.ops.mean(tfmetric.losses.nt_xent_loss(labels, e, temperature=0.5)), x)
    numeric = numeric_gradient(
        lambda e: nt_xent_reference(labels, e, 0.5, "cosine"), x.astype(np.float64)
    )
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)
