"""ProxyAnchor and ProxyNCA against numpy references."""

import backend_ops
import head_references as ref
import keras
import numpy as np
import pytest

import tfmetric


def _head_with_proxies(head, proxies):
    head.build((None, proxies.shape[1]))
    head.proxies.assign(proxies.astype("float32"))
    return head


@pytest.mark.parametrize(
    "labels",
    [
        [0, 0, 1, 1, 2, 2, 3, 0],  # every class present
        [0, 0, 1, 1, 0, 1, 0, 1],  # classes 2, 3 absent: P+ smaller than P
        [0, 1, 2, 3, 4, 5, 6, 7],  # no positive pair in the batch
    ],
)
@pytest.mark.parametrize("margin,alpha", [(0.1, 32.0), (0.0, 4.0)])
def test_proxy_anchor_matches_reference(labels, margin, alpha):
    rng = np.random.default_rng(0)
    labels = np.array(labels)
    num_classes = 8
    proxies = rng.normal(size=(num_classes, 5))
    embeddings = rng.normal(size=(len(labels), 5))
    head = _head_with_proxies(tfmetric.layers.ProxyAnchor(num_classes, margin, alpha), proxies)
    values = keras.ops.convert_to_numpy(head(embeddings.astype("float32"), labels))
    expected = ref.proxy_anchor(embeddings, labels, proxies, margin, alpha)
    assert values.shape == (len(labels),)
    np.testing.assert_allclose(values, expected, rtol=1e-4)


def test_proxy_anchor_gradient_is_finite_without_positive_pairs():
    head = tfmetric.layers.ProxyAnchor(4)
    embeddings = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    head.build((None, 3))
    loss, (d_embeddings, d_weights) = backend_ops.value_and_grad_with_variables(
        lambda e: keras.ops.mean(head(e, np.array([0, 1, 2, 3]))), embeddings, [head.proxies]
    )
    grads = [d_embeddings, *d_weights]
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in grads)
    # Absent classes get a gradient from the negative term only; present ones from both.
    assert np.any(keras.ops.convert_to_numpy(grads[1]) != 0.0)


@pytest.mark.parametrize("scale", [9.0, 1.0])
def test_proxy_nca_matches_reference(scale):
    rng = np.random.default_rng(2)
    labels = np.array([0, 1, 2, 1, 0, 2])
    proxies = rng.normal(size=(3, 4))
    embeddings = rng.normal(size=(6, 4))
    head = _head_with_proxies(tfmetric.layers.ProxyNCA(3, scale=scale), proxies)
    expected = ref.proxy_nca(embeddings, labels, proxies, scale)
    got = keras.ops.convert_to_numpy(head(embeddings.astype("float32"), labels))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_proxy_nca_is_lowest_on_the_proxy():
    head = _head_with_proxies(tfmetric.layers.ProxyNCA(3, scale=2.0), np.eye(3))
    on_proxy = float(head(np.array([[2.0, 0.0, 0.0]], "float32"), np.array([0]))[0])
    off_proxy = float(head(np.array([[0.0, 2.0, 0.0]], "float32"), np.array([0]))[0])
    # On the proxy: d_y = 0 and both negatives at squared distance 2, scaled to 4.
    np.testing.assert_allclose(on_proxy, np.log(2.0) - 4.0, rtol=1e-5)
    assert on_proxy < off_proxy


@pytest.mark.parametrize(
    "make,argument",
    [
        (lambda: tfmetric.layers.ProxyAnchor(3, margin=-0.1), "margin"),
        (lambda: tfmetric.layers.ProxyAnchor(3, alpha=0.0), "alpha"),
        (lambda: tfmetric.layers.ProxyNCA(3, scale=0.0), "scale"),
        (lambda: tfmetric.layers.ProxyNCA(1), "num_classes"),
    ],
)
def test_bad_arguments(make, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make()


@pytest.mark.parametrize(
    "make",
    [lambda: tfmetric.layers.ProxyNCA(4), lambda: tfmetric.layers.SubCenterArcFace(4, centers=3)],
    ids=["ProxyNCA", "SubCenterArcFace"],
)
def test_nan_embedding_gives_nan_similarities_when_compiled(make):
    # Inside a compiled step inputs cannot be checked: a NaN embedding must not
    # come out as a plausible cosine (the clamp to [-1, 1] keeps it NaN).
    head = make()
    head.build((None, 3))
    x = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
    x[0, 1] = np.nan
    if backend_ops.backend() == "torch":  # runs eagerly (backend_ops.jit): the input is checked
        with pytest.raises(ValueError, match="`embeddings` contains NaN"):
            head.similarities(x)
        return
    cosine = keras.ops.convert_to_numpy(backend_ops.jit(head.similarities)(x))
    assert np.isnan(cosine[0]).all()
    assert np.isfinite(cosine[1]).all() and (np.abs(cosine[1]) <= 1.0).all()
