import backend_ops
import keras
import numpy as np
import pytest
from references import numeric_gradient, pairwise

from tfmetric import distances

NAMES = ["euclidean", "squared_euclidean", "cosine", "manhattan", "inner_product"]


def _data(n=6, m=5, d=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.normal(size=(m, d)).astype("float32")


@pytest.mark.parametrize("name", NAMES)
def test_matches_definition(name):
    x, y = _data()
    np.testing.assert_allclose(distances.get(name)(x, y), pairwise(x, y, name), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0])
def test_minkowski_matches_definition(p):
    x, y = _data()
    got = distances.Minkowski(p)(x, y)
    np.testing.assert_allclose(got, pairwise(x, y, ("minkowski", p)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [1.0, 1.5, 3.0, np.inf, "manhattan"])
@pytest.mark.parametrize("n, m", [(0, 3), (3, 0), (0, 0)])
def test_minkowski_of_an_empty_batch_is_empty(p, n, m):
    x, y = _data(n, m, d=4)
    distance = distances.Manhattan() if p == "manhattan" else distances.Minkowski(p)
    matrix = keras.ops.convert_to_numpy(distance(x, y))
    expected = np.linalg.norm(x[:, None] - y[None], ord=1 if p == "manhattan" else p, axis=-1)
    assert matrix.shape == expected.shape == (n, m) and matrix.dtype == np.float32
    assert keras.ops.convert_to_numpy(distance(x)).shape == (n, n)
    assert keras.ops.convert_to_numpy(distance.paired(x[:0], y[:0])).shape == (0,)
    total, (gx, gy) = backend_ops.value_and_grad(
        lambda a, b: keras.ops.sum(distance(a, b)), x, y, argnums=(0, 1)
    )
    assert total == 0.0 and gx.shape == (n, 4) and gy.shape == (m, 4)
    assert not gx.any() and not gy.any()


@pytest.mark.parametrize("name", NAMES)
def test_self_distance_has_zero_diagonal_for_distances(name):
    x, _ = _data()
    matrix = np.asarray(distances.get(name)(x))
    expected = pairwise(x, x, name)
    if name != "inner_product":
        np.fill_diagonal(expected, 0.0)
        assert np.all(np.diag(matrix) == 0.0)
    np.testing.assert_allclose(matrix, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("distance", NAMES + [distances.Minkowski(3.0)])
def test_gradient_finite_for_coinciding_embeddings(distance):
    x, _ = _data(n=4)
    x = np.concatenate([x, x, np.zeros_like(x[:1]), np.zeros_like(x[:1])])
    grad = backend_ops.grad(
        lambda e: keras.ops.sum(distances.get(distance)(e))
        + keras.ops.sum(distances.get(distance)(e, e)),
        x,
    )
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "manhattan", distances.Minkowski(3)])
def test_gradient_matches_finite_differences(distance):
    x, y = _data(n=3, m=4, d=5, seed=1)
    weights = np.random.default_rng(2).normal(size=(3, 4)).astype("float32")
    ref_name = ("minkowski", 3.0) if isinstance(distance, distances.Minkowski) else distance
    _, (gx, gy) = backend_ops.value_and_grad(
        lambda a, b: keras.ops.sum(distances.get(distance)(a, b) * keras.ops.convert_to_tensor(weights)), x, y, argnums=(0, 1)
    )
    num_x = numeric_gradient(lambda a: np.sum(pairwise(a, y, ref_name) * weights), x)
    num_y = numeric_gradient(lambda b: np.sum(pairwise(x, b, ref_name) * weights), y)
    np.testing.assert_allclose(gx, num_x, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(gy, num_y, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64", "int32"])
def test_output_is_float32(dtype):
    x, y = _data()
    out = distances.Euclidean()(keras.ops.cast(x, dtype), keras.ops.cast(y, dtype))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))


@pytest.mark.parametrize("distance", NAMES + [distances.Minkowski(1.5)])
def test_xla_forward_and_backward(distance):
    x, y = _data()
    distance = distances.get(distance)

    step = backend_ops.jit(
        backend_ops.gradient_function(lambda a, b: keras.ops.sum(distance(a, b)), argnums=0)
    )
    total, grad = (keras.ops.convert_to_numpy(t) for t in step(x, y))
    np.testing.assert_allclose(total, pairwise(x, y, _ref(distance)).sum(), rtol=1e-4)
    assert np.all(np.isfinite(grad))


def _ref(distance):
    if isinstance(distance, distances.Minkowski):
        return ("minkowski", distance.p)
    return distance.name


def test_get_accepts_name_config_and_instance():
    assert isinstance(distances.get("euclidean"), distances.Euclidean)
    assert isinstance(distances.get("Squared-Euclidean"), distances.SquaredEuclidean)
    instance = distances.Minkowski(3)
    assert distances.get(instance) is instance
    assert distances.get(distances.serialize(instance)) == instance
    assert distances.get(keras.saving.serialize_keras_object(instance)) == instance
    assert distances.serialize(distances.Cosine()) == "cosine"
    assert distances.InnerProduct().is_similarity and not distances.Cosine().is_similarity


@pytest.mark.parametrize(
    "identifier, message",
    [("hamming", "Unknown `distance`"), (3, "`distance` must be"), ({"class_name": "Nope"}, "distance")],
)
def test_get_rejects_unknown(identifier, message):
    with pytest.raises(ValueError, match=message):
        distances.get(identifier)


@pytest.mark.parametrize("p", [0.5, -1, "two", True])
def test_minkowski_rejects_bad_order(p):
    with pytest.raises(ValueError, match="`p`"):
        distances.Minkowski(p)


def test_bad_shapes_name_the_argument():
    x, y = _data()
    with pytest.raises(ValueError, match="`x`"):
        distances.Euclidean()(x[0])
    with pytest.raises(ValueError, match="same embedding size"):
        distances.Euclidean()(x, y[:, :3])
    with pytest.raises(TypeError, match="`y`"):
        distances.Euclidean()(x, y > 0)


@pytest.mark.tf_only  # inspects the TensorFlow graph
def test_minkowski_memory_is_blockwise(monkeypatch):
    import tensorflow as tf

    # With the block budget at n*m elements, no tensor exceeds (n, m), forward or backward.
    from graph_memory import largest_tensor_elements

    monkeypatch.setattr(distances, "_BLOCK_ELEMENTS", 40 * 30)
    x, y = (tf.constant(a) for a in _data(n=40, m=30, d=9))

    def step(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            total = tf.reduce_sum(distances.Minkowski(3)(a, b)) + tf.reduce_sum(distances.Manhattan()(a, b))
            total += tf.reduce_sum(distances.Minkowski(float("inf"))(a, b))  # counts its ties
        return tape.gradient(total, [a, b])

    assert largest_tensor_elements(step, x, y) <= 40 * 30


@pytest.mark.parametrize("distance", NAMES + [distances.Minkowski(3.0), distances.Minkowski(2.0)])
def test_paired_matches_definition_row_by_row(distance):
    x, y = _data(n=5, m=5)
    distance = distances.get(distance)
    expected = np.diag(pairwise(x, y, _ref(distance)))
    np.testing.assert_allclose(distance.paired(x, y), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="number of rows"):
        distance.paired(x, y[:3])


@pytest.mark.parametrize("name", NAMES)
def test_float64_beyond_float32_range_is_named(name):
    # Finite in float64, Inf after the cast to float32: checked after the cast (it gave NaN).
    x = np.array([[1e40], [0.0]])
    with pytest.raises(ValueError, match=r"`x` holds values beyond float32's range"):
        distances.get(name)(x)
    with pytest.raises(ValueError, match=r"`y` holds values beyond float32's range"):
        distances.get(name).paired(x[1:], x[:1])
    with pytest.raises(ValueError, match="`x` contains NaN or infinite"):
        distances.get(name)(np.array([[np.inf], [0.0]]))


def _chebyshev_value_and_grads(x, y):
    chebyshev = distances.Minkowski(float("inf"))

    def pairwise_sum(a, b):
        return keras.ops.sum(chebyshev(a, b))

    def paired_sum(a, b):
        return keras.ops.sum(chebyshev.paired(a, b))

    _, pairwise_grads = backend_ops.value_and_grad(pairwise_sum, x, y, argnums=(0, 1))
    _, paired_grads = backend_ops.value_and_grad(paired_sum, x, y, argnums=(0, 1))
    return pairwise_grads, paired_grads


def test_chebyshev_gradient_on_ties_is_a_subgradient_matching_paired():
    # |x - y| = [1, 1, 0.5]: two tied coordinates attain the maximum.
    x = np.array([[1.0, 0.0, 0.5]], "float32")
    y = np.array([[0.0, 1.0, 0.0]], "float32")
    (gx, gy), (px, py) = _chebyshev_value_and_grads(x, y)
    np.testing.assert_allclose(gx, [[0.5, -0.5, 0.0]], atol=1e-7)  # each tie shares the slope
    np.testing.assert_allclose(gx, px, atol=1e-7)
    np.testing.assert_allclose(gy, py, atol=1e-7)
    np.testing.assert_allclose(gy, -gx, atol=1e-7)

    # The directional derivative along u, which moves both tied coordinates alike, is
    # max_k sign_k u_k over the ties = 1/sqrt(2): what the gradient predicts.
    def chebyshev(a):
        return np.max(np.abs(a.astype(np.float64) - y), axis=1).sum()

    u = np.array([[1.0, -1.0, 0.0]]) / np.sqrt(2.0)
    eps = 1e-3
    slope = (chebyshev(x + eps * u) - chebyshev(x - eps * u)) / (2 * eps)
    np.testing.assert_allclose(slope, 1 / np.sqrt(2.0), rtol=1e-6)
    np.testing.assert_allclose(np.sum(gx * u), slope, rtol=1e-5)
    # A subgradient of a max: in the convex hull of the tied coordinates' gradients, i.e.
    # for every direction, <g, v> <= the one-sided directional derivative max over the ties.
    for v in np.random.default_rng(0).normal(size=(20, 1, 3)):
        one_sided = (chebyshev(x + eps * v) - chebyshev(x)) / eps
        assert np.sum(gx * v) <= one_sided + 1e-3


@pytest.mark.parametrize("block_elements", [None, 5 * 5 * 2])
def test_chebyshev_matrix_gradient_matches_paired_on_many_ties(block_elements, monkeypatch):
    # Quantised features tie often; the matrix's diagonal gradient equals the row-wise one,
    # also with several feature blocks (ties counted across blocks of 2 features).
    if block_elements is not None:
        monkeypatch.setattr(distances, "_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, size=(5, 9)).astype("float32")  # binary features
    y = rng.integers(0, 2, size=(5, 9)).astype("float32")
    ties = np.abs(x - y) == np.abs(x - y).max(axis=1, keepdims=True)
    assert np.any(ties.sum(axis=1) > 2)  # the data do hold ties, across blocks
    chebyshev = distances.Minkowski(float("inf"))
    eye = np.eye(5, dtype="float32")
    _, (gx, gy) = backend_ops.value_and_grad(
        lambda a, b: keras.ops.sum(chebyshev(a, b) * keras.ops.convert_to_tensor(eye)),
        x,
        y,
        argnums=(0, 1),
    )
    _, (px, py) = backend_ops.value_and_grad(
        lambda a, b: keras.ops.sum(chebyshev.paired(a, b)), x, y, argnums=(0, 1)
    )
    np.testing.assert_allclose(gx, px, atol=1e-6)
    np.testing.assert_allclose(gy, py, atol=1e-6)
    # Reference from the definition: sign(x - y) / (number of ties) on the tied coordinates.
    expected = np.where(ties, np.sign(x - y), 0.0) / ties.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(gx, expected, atol=1e-6)


@pytest.mark.parametrize(
    "identifier",
    [
        {"class_name": "Minkowski", "config": {"q": 3}},
        {"class_name": "Jaccard", "config": {"weighted": False, "extra": 1}},
        {"class_name": "FittedMahalanobis", "config": {}},
        {"class_name": "Euclidean", "config": [1, 2]},
    ],
)
def test_get_rejects_malformed_config_with_value_error(identifier):
    with pytest.raises(ValueError, match="Cannot build a `distance`"):
        distances.get(identifier)


@pytest.mark.parametrize("scale", [1e-19, 1e-17, 1.0, 1e18])
def test_squared_euclidean_and_inner_product_ranges_in_the_docs(scale):
    # docs/validation.md: squared euclidean about 1e-19 to 1e19, inner product about 1e-17
    # to 1e19 (a plain matrix product, whose entry products flush to zero below that).
    x, y = (a.astype(np.float64) for a in _data(n=8, m=6, d=8, seed=4))
    x, y = x * scale, y * scale
    squared = np.asarray(distances.SquaredEuclidean()(x, y), np.float64)
    expected = pairwise(x, y, "squared_euclidean")
    np.testing.assert_allclose(squared, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    if scale >= 1e-17:
        inner = np.asarray(distances.InnerProduct()(x, y), np.float64)
        expected = x @ y.T
        np.testing.assert_allclose(inner, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
