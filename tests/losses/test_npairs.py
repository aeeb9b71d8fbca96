"""Multi-class N-pair loss against a loop reference (Sohn 2016, eq. 3)."""

import backend_ops
import keras
import numpy as np
import pytest
from references import numeric_gradient

import tfmetric

LABELS = [
    np.array([0, 0, 0, 1, 1, 2, 2, 2, 3]),
    np.array([4, 1, 4, 1, 7, 4, 1, 9]),
    np.array([0, 1, 2, 0, 1, 2]),
]


def similarity(x, distance):
    if distance == "inner_product":
        return x @ x.T
    if distance == "cosine":
        n = x / np.linalg.norm(x, axis=1, keepdims=True)
        return n @ n.T
    return -np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def reference(labels, x, distance):
    s = similarity(x.astype(np.float64), distance)
    pairs = []
    for label in dict.fromkeys(labels.tolist()):
        members = np.flatnonzero(labels == label)
        if len(members) >= 2:
            pairs.append((members[0], members[1]))
    # L = 1/N sum_i log(1 + sum_{j != i} exp(f_i' f_j+ - f_i' f_i+))
    losses = []
    for i, (anchor, positive) in enumerate(pairs):
        others = sum(
            np.exp(s[anchor, other] - s[anchor, positive])
            for j, (_, other) in enumerate(pairs)
            if j != i
        )
        losses.append(np.log1p(others))
    return np.mean(losses)


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("distance", ["inner_product", "cosine", "euclidean"])
def test_matches_reference(labels, distance):
    rng = np.random.default_rng(len(labels))
    x = rng.normal(size=(len(labels), 5)).astype("float32")
    expected = reference(labels, x, distance)
    values = tfmetric.losses.npairs_loss(labels, x, distance=distance)
    np.testing.assert_allclose(np.mean(keras.ops.convert_to_numpy(values)), expected, rtol=1e-4, atol=1e-5)
    loss = tfmetric.losses.NPairsLoss(distance=distance)
    np.testing.assert_allclose(float(loss(labels, x)), expected, rtol=1e-4, atol=1e-5)


def test_single_pair_gives_zero():
    labels = np.array([3, 3, 5])
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(tfmetric.losses.npairs_loss(labels, x), 0.0)


def test_gradient_matches_finite_differences():
    labels = LABELS[0]
    x = np.random.default_rng(11).normal(size=(len(labels), 3)).astype("float32")
    grad = backend_ops.grad(lambda e: keras.ops.mean(tfmetric.losses.npairs_loss(labels, e, **{})), x)
    numeric = numeric_gradient(lambda e: reference(labels, e, "inner_product"), x.astype(np.float64))
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)
