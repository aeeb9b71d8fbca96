"""Circle loss against a loop reference from Sun et al. 2020 and keras.losses.circle."""

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
    return 1.0 - np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def reference(labels, x, margin, gamma, distance, weights_from=None):
    """Eq. 4; the weights a_p, a_n come from `weights_from` (default `x`), held constant."""
    s = similarity(x.astype(np.float64), distance)
    w = s if weights_from is None else similarity(weights_from.astype(np.float64), distance)
    o_p, o_n, d_p, d_n = 1 + margin, -margin, 1 - margin, margin
    losses = []
    for i in range(len(labels)):
        pos = [(s[i, j], w[i, j]) for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [(s[i, k], w[i, k]) for k in range(len(labels)) if labels[k] != labels[i]]
        if not pos or not neg:
            continue
        # Eq. 4 of the paper: log[1 + sum_n exp(g a_n (s_n - D_n)) sum_p exp(-g a_p (s_p - D_p))],
        # evaluated in log space so that gamma=256 does not overflow float64.
        log_n = [gamma * max(wn - o_n, 0) * (sn - d_n) for sn, wn in neg]
        log_p = [-gamma * max(o_p - wp, 0) * (sp - d_p) for sp, wp in pos]
        log_product = np.logaddexp.reduce(log_n) + np.logaddexp.reduce(log_p)
        losses.append(np.logaddexp(0.0, log_product))
    return np.mean(losses)


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"gamma": 16.0},
        {"margin": 0.4, "gamma": 4.0},
        {"margin": 0.1, "gamma": 2.0, "distance": "euclidean"},
        {"margin": 0.0, "gamma": 1.0, "distance": "inner_product"},
    ],
)
def test_matches_reference(labels, kwargs):
    rng = np.random.default_rng(len(labels))
    x = (0.5 * rng.normal(size=(len(labels), 5))).astype("float32")
    args = {"margin": 0.25, "gamma": 256.0, "distance": "cosine"}
    args.update(kwargs)
    expected = reference(labels, x, **args)
    values = tfmetric.losses.circle_loss(labels, x, **args)
    np.testing.assert_allclose(np.mean(keras.ops.convert_to_numpy(values)), expected, rtol=1e-4, atol=1e-5)
    loss = tfmetric.losses.CircleLoss(**args)
    np.testing.assert_allclose(float(loss(labels, x)), expected, rtol=1e-4, atol=1e-5)


def test_large_gamma_is_finite_and_exact():
    labels = LABELS[0]
    x = np.random.default_rng(3).normal(size=(len(labels), 5)).astype("float32")
    expected = reference(labels, x, 0.25, 256.0, "cosine")
    np.testing.assert_allclose(np.mean(keras.ops.convert_to_numpy(tfmetric.losses.circle_loss(labels, x))), expected, rtol=1e-4)


def test_same_per_anchor_values_as_keras_circle():
    labels = LABELS[0]
    x = np.random.default_rng(5).normal(size=(len(labels), 5))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")
    ours = np.asarray(tfmetric.losses.circle_loss(labels, x, margin=0.4, gamma=80.0))
    theirs = np.asarray(keras.losses.circle(labels, x, margin=0.4, gamma=80))
    valid = np.array([np.sum(labels == label) > 1 for label in labels])
    # Ours scales valid anchors by B / #valid so that the batch mean is the mean over them.
    np.testing.assert_allclose(
        ours[valid] * valid.sum() / len(labels), theirs[valid], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(ours[~valid], 0.0)


def test_gradient_holds_the_weights_constant():
    labels = LABELS[0]
    x = np.random.default_rng(11).normal(size=(len(labels), 3)).astype("float32")
    grad = backend_ops.grad(lambda e: keras.ops.mean(tfmetric.losses.circle_loss(labels, e, gamma=4.0)), x)
    x64 = x.astype(np.float64)
    numeric = numeric_gradient(
        lambda e: reference(labels, e, 0.25, 4.0, "cosine", weights_from=x64), x64
    )
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)
