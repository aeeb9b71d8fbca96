"""Multi-similarity loss against a loop reference written from Wang et al. 2019."""

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
    """S_ij as the loss documents it: cosine similarity, or 1 - d for a distance."""
    if distance == "cosine":
        n = x / np.linalg.norm(x, axis=1, keepdims=True)
        return n @ n.T
    if distance == "inner_product":
        return x @ x.T
    return 1.0 - np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def reference(labels, x, alpha, beta, base, epsilon, distance):
    s = similarity(x.astype(np.float64), distance)
    b = len(labels)
    total = 0.0
    for i in range(b):
        pos = [j for j in range(b) if j != i and labels[j] == labels[i]]
        neg = [k for k in range(b) if labels[k] != labels[i]]
        # Pair mining (eq. 5 and 6 of the paper).
        kept_pos = [j for j in pos if neg and s[i, j] < max(s[i, k] for k in neg) + epsilon]
        kept_neg = [k for k in neg if pos and s[i, k] > min(s[i, j] for j in pos) - epsilon]
        pos_sum = sum(np.exp(-alpha * (s[i, j] - base)) for j in kept_pos)
        neg_sum = sum(np.exp(beta * (s[i, k] - base)) for k in kept_neg)
        total += np.log1p(pos_sum) / alpha + np.log1p(neg_sum) / beta
    return total / b


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"alpha": 1.0, "beta": 10.0, "base": 0.2, "epsilon": 0.3},
        {"epsilon": 0.0, "distance": "euclidean", "beta": 5.0},
        {"distance": "inner_product", "base": 0.0, "beta": 3.0},
    ],
)
def test_matches_reference(labels, kwargs):
    rng = np.random.default_rng(len(labels))
    x = rng.normal(size=(len(labels), 5)).astype("float32")
    args = {"alpha": 2.0, "beta": 50.0, "base": 0.5, "epsilon": 0.1, "distance": "cosine"}
    args.update(kwargs)
    expected = reference(labels, x, **args)
    values = tfmetric.losses.multi_similarity_loss(labels, x, **args)
    assert np.asarray(values).shape == (len(labels),)
    np.testing.assert_allclose(np.mean(keras.ops.convert_to_numpy(values)), expected, rtol=1e-4, atol=1e-5)
    loss = tfmetric.losses.MultiSimilarityLoss(**args)
    np.testing.assert_allclose(float(loss(labels, x)), expected, rtol=1e-4, atol=1e-5)


def test_mining_drops_easy_pairs():
    # Anchor 0: its positive (s=1) is easier than every negative, so it is not
    # mined, and the far negative (s=-1) is easier than every positive.
    labels = np.array([0, 0, 1])
    x = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], "float32")
    values = np.asarray(tfmetric.losses.multi_similarity_loss(labels, x))
    np.testing.assert_allclose(values, 0.0, atol=1e-7)


def test_gradient_matches_finite_differences():
    labels = LABELS[0]
    x = np.random.default_rng(11).normal(size=(len(labels), 3)).astype("float32")
    grad = backend_ops.grad(lambda e: keras.ops.mean(tfmetric.losses.multi_similarity_loss(labels, e, **{"beta": 10.0})), x)
    numeric = numeric_gradient(lambda e: reference(labels, e, 2.0, 10.0, 0.5, 0.1, "cosine"), x.astype(np.float64))
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)
