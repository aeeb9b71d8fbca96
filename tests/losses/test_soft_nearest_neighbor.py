"""Soft nearest neighbour loss against a loop reference (Frosst et al. 2019, eq. 1)."""

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


def neg_distance(x, distance):
    squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if distance == "squared_euclidean":
        return -squared
    if distance == "euclidean":
        return -np.sqrt(squared)
    if distance == "cosine":
        n = x / np.linalg.norm(x, axis=1, keepdims=True)
        return n @ n.T
    return x @ x.T


def reference(labels, x, temperature, distance):
    z = neg_distance(x.astype(np.float64), distance) / temperature
    b = len(labels)
    losses = []
    for i in range(b):
        same = [np.exp(z[i, j]) for j in range(b) if j != i and labels[j] == labels[i]]
        if not same:
            continue
        others = [np.exp(z[i, k]) for k in range(b) if k != i]
        losses.append(-np.log(sum(same) / sum(others)))
    return np.mean(losses)


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"temperature": 10.0},
        {"temperature": 0.5, "distance": "euclidean"},
        {"temperature": 0.2, "distance": "cosine"},
        {"temperature": 2.0, "distance": "inner_product"},
    ],
)
def test_matches_reference(labels, kwargs):
    rng = np.random.default_rng(len(labels))
    x = rng.normal(size=(len(labels), 5)).astype("float32")
    args = {"temperature": 1.0, "distance": "squared_euclidean"}
    args.update(kwargs)
    expected = reference(labels, x, **args)
    values = tfmetric.losses.soft_nearest_neighbor_loss(labels, x, **args)
    np.testing.assert_allclose(np.mean(keras.ops.convert_to_numpy(values)), expected, rtol=1e-4, atol=1e-5)
    loss = tfmetric.losses.SoftNearestNeighborLoss(**args)
    np.testing.assert_allclose(float(loss(labels, x)), expected, rtol=1e-4, atol=1e-5)


def test_gradient_matches_finite_differences():
    labels = LABELS[0]
    x = np.random.default_rng(11).normal(size=(len(labels), 3)).astype("float32")
    grad = backend_ops.grad(lambda e: keras.ops.mean(tfmetric.losses.soft_nearest_neighbor_loss(labels, e, **{})), x)
    numeric = numeric_gradient(lambda e: reference(labels, e, 1.0, "squared_euclidean"), x.astype(np.float64))
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)
