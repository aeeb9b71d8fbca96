"""Generalised lifted structure loss against a loop reference (Hermans et al. 2017, eq. 5)."""

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


def dissimilarity(x, distance):
    if distance == "inner_product":
        return -(x @ x.T)
    squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if distance == "squared_euclidean":
        return squared
    if distance == "cosine":
        n = x / np.linalg.norm(x, axis=1, keepdims=True)
        return 1.0 - n @ n.T
    return np.sqrt(squared)


def reference(labels, x, margin, distance):
    d = dissimilarity(x.astype(np.float64), distance)
    losses = []
    for a in range(len(labels)):
        pos = [d[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        if not pos or not neg:
            continue
        value = np.log(sum(np.exp(v) for v in pos)) + np.log(sum(np.exp(margin - v) for v in neg))
        losses.append(max(value, 0.0))
    return np.mean(losses)


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"margin": 0.0},
        {"margin": 3.0, "distance": "squared_euclidean"},
        {"margin": 0.5, "distance": "cosine"},
        {"margin": 0.5, "distance": "inner_product"},
    ],
)
def test_matches_reference(labels, kwargs):
    rng = np.random.default_rng(len(labels))
    x = rng.normal(size=(len(labels), 5)).astype("float32")
    args = {"margin": 1.0, "distance": "euclidean"}
    args.update(kwargs)
    expected = reference(labels, x, **args)
    values = tfmetric.losses.lifted_structure_loss(labels, x, **args)
    np.testing.assert_allclose(np.mean(keras.ops.convert_to_numpy(values)), expected, rtol=1e-4, atol=1e-5)
    loss = tfmetric.losses.LiftedStructureLoss(**args)
    np.testing.assert_allclose(float(loss(labels, x)), expected, rtol=1e-4, atol=1e-5)


def test_hinge_is_zero_for_well_separated_classes():
    labels = np.array([0, 0, 1, 1])
    x = np.array([[0.0, 0.0], [0.0, 0.1], [10.0, 0.0], [10.0, 0.1]], "float32")
    np.testing.assert_allclose(tfmetric.losses.lifted_structure_loss(labels, x), 0.0)


def test_gradient_matches_finite_differences():
    labels = LABELS[0]
    x = np.random.default_rng(11).normal(size=(len(labels), 3)).astype("float32")
    grad = backend_ops.grad(lambda e: keras.ops.mean(tfmetric.losses.lifted_structure_loss(labels, e, **{})), x)
    numeric = numeric_gradient(lambda e: reference(labels, e, 1.0, "euclidean"), x.astype(np.float64))
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)
