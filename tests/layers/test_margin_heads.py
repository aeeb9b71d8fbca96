"""ArcFace, SubCenterArcFace, CosFace and NormalizedSoftmax against numpy references."""

import math

import head_references as ref
import numpy as np
import pytest
from keras import ops

import tfmetric
from tfmetric.layers import margin_heads


def _head_with_proxies(head, proxies):
    head.build((None, proxies.shape[1]))
    head.proxies.assign(proxies.astype("float32"))
    return head


def _batch(rng, num_classes, centers=1, size=10, dim=6):
    proxies = rng.normal(size=(num_classes * centers, dim))
    labels = rng.integers(0, num_classes, size=size)
    embeddings = rng.normal(size=(size, dim))
    # Two samples near the antipode of their proxy: theta + m passes pi there.
    embeddings[0] = -proxies[labels[0] * centers] + 0.01 * rng.normal(size=dim)
    embeddings[1] = -proxies[labels[1] * centers]
    return embeddings, labels, proxies


@pytest.mark.parametrize("margin,scale", [(0.5, 64.0), (0.3, 2.0), (0.0, 10.0)])
def test_arcface_matches_reference(margin, scale):
    rng = np.random.default_rng(1)
    embeddings, labels, proxies = _batch(rng, 4)
    head = _head_with_proxies(tfmetric.layers.ArcFace(4, margin=margin, scale=scale), proxies)
    expected = ref.arcface(embeddings, labels, proxies, margin, scale)
    got = ops.convert_to_numpy(head(embeddings.astype("float32"), labels))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-3)


def test_arcface_easy_margin_matches_reference():
    rng = np.random.default_rng(2)
    embeddings, labels, proxies = _batch(rng, 3)
    head = _head_with_proxies(
        tfmetric.layers.ArcFace(3, margin=0.4, scale=4.0, easy_margin=True), proxies
    )
    expected = ref.arcface(embeddings, labels, proxies, 0.4, 4.0, easy_margin=True)
    np.testing.assert_allclose(
        ops.convert_to_numpy(head(embeddings.astype("float32"), labels)), expected, rtol=1e-4, atol=1e-4
    )


def test_arcface_target_logit_decreases_with_the_angle():
    theta = np.linspace(0.0, math.pi, 2001)
    cosine = np.stack([np.cos(theta), np.zeros_like(theta)], axis=1).astype("float32")
    one_hot = np.tile(np.array([[1.0, 0.0]], "float32"), (len(theta), 1))
    logits = margin_heads.additive_angular_logits(cosine, one_hot, 0.5, 1.0)
    target = ops.convert_to_numpy(logits)[:, 0]
    assert np.all(np.diff(target) <= 1e-6)
    # Below pi - m it is exactly cos(theta + m).
    inside = theta < math.pi - 0.5 - 1e-3
    np.testing.assert_allclose(target[inside], np.cos(theta[inside] + 0.5), atol=1e-5)


@pytest.mark.parametrize("centers", [1, 3])
def test_subcenter_arcface_matches_reference(centers):
    rng = np.random.default_rng(3)
    embeddings, labels, proxies = _batch(rng, 4, centers=centers)
    head = _head_with_proxies(
        tfmetric.layers.SubCenterArcFace(4, centers=centers, margin=0.5, scale=8.0), proxies
    )
    expected = ref.arcface(embeddings, labels, proxies, 0.5, 8.0, centers=centers)
    got = ops.convert_to_numpy(head(embeddings.astype("float32"), labels))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert tuple(head.proxies.shape) == (4 * centers, 6)


def test_subcenter_uses_the_closest_center():
    head = tfmetric.layers.SubCenterArcFace(2, centers=2)
    proxies = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    _head_with_proxies(head, proxies)
    cos = ops.convert_to_numpy(head.similarities(np.array([[0.0, 2.0]], "float32")))
    np.testing.assert_allclose(cos, [[1.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("margin,scale", [(0.35, 64.0), (0.1, 3.0)])
def test_cosface_matches_reference(margin, scale):
    rng = np.random.default_rng(4)
    embeddings, labels, proxies = _batch(rng, 5)
    head = _head_with_proxies(tfmetric.layers.CosFace(5, margin=margin, scale=scale), proxies)
    expected = ref.cosface(embeddings, labels, proxies, margin, scale)
    got = ops.convert_to_numpy(head(embeddings.astype("float32"), labels))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-3)


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_normalized_softmax_matches_reference(temperature):
    rng = np.random.default_rng(5)
    embeddings, labels, proxies = _batch(rng, 3)
    head = _head_with_proxies(tfmetric.layers.NormalizedSoftmax(3, temperature), proxies)
    expected = ref.normalized_softmax(embeddings, labels, proxies, temperature)
    got = ops.convert_to_numpy(head(embeddings.astype("float32"), labels))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-3)


def test_margin_raises_the_loss():
    rng = np.random.default_rng(6)
    embeddings, labels, proxies = _batch(rng, 3)
    values = [
        float(
            ops.mean(
                _head_with_proxies(tfmetric.layers.CosFace(3, m, 8.0), proxies)(
                    embeddings.astype("float32"), labels
                )
            )
        )
        for m in (0.0, 0.2, 0.4)
    ]
    assert values[0] < values[1] < values[2]


@pytest.mark.parametrize(
    "make,argument",
    [
        (lambda: tfmetric.layers.ArcFace(3, margin=-0.1), "margin"),
        (lambda: tfmetric.layers.ArcFace(3, margin=2.0), "margin"),
        (lambda: tfmetric.layers.ArcFace(3, scale=0.0), "scale"),
        (lambda: tfmetric.layers.CosFace(3, margin=-1.0), "margin"),
        (lambda: tfmetric.layers.CosFace(3, scale=-2.0), "scale"),
        (lambda: tfmetric.layers.SubCenterArcFace(3, centers=0), "centers"),
        (lambda: tfmetric.layers.NormalizedSoftmax(3, temperature=0.0), "temperature"),
    ],
)
def test_bad_arguments(make, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make()
