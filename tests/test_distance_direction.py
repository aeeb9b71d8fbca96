"""`Distance` answers direction questions; callers (metrics, clustering) follow it."""

import keras
import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import normalized_mutual_info_score

import tfmetric

X = np.array([[0.0, 1.0], [2.0, 0.5], [-1.0, 3.0]], "float32")
Y = np.array([[1.0, 1.0], [0.0, -2.0]], "float32")


def test_direction_views_of_a_distance_and_a_similarity():
    d = ((X[:, None] - Y[None]) ** 2).sum(-1) ** 0.5
    s = X @ Y.T
    euclidean = tfmetric.distances.get("euclidean")
    inner = tfmetric.distances.get("inner_product")
    np.testing.assert_allclose(np.asarray(euclidean.closeness(X, Y)), -d, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(euclidean.dissimilarity(X, Y)), d, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(euclidean.similarity(X, Y)), 1.0 - d, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(inner.closeness(X, Y)), s, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(inner.dissimilarity(X, Y)), -s, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(inner.similarity(X, Y)), s, rtol=1e-6)
    # Value maps work on numbers and arrays, and are their own inverses.
    assert euclidean.to_closeness(2.0) == -2.0 and euclidean.from_closeness(-2.0) == 2.0
    assert inner.to_closeness(2.0) == 2.0 and inner.to_dissimilarity(2.0) == -2.0
    assert euclidean.farther_by(3.0, 1.0) == 2.0 and inner.farther_by(3.0, 1.0) == -2.0
    assert euclidean.margin_bounds(0.5) == (0.0, 0.5)
    assert inner.margin_bounds(0.5) == (0.5, 0.0)
    assert euclidean.from_closeness(-np.inf) == np.inf
    assert inner.from_closeness(-np.inf) == -np.inf


def test_direction_of_distances_scorers_and_plain_scores():
    distances = tfmetric.distances
    assert distances.direction_of("cosine") == distances.Cosine()
    assert distances.direction_of(distances.SIMILARITY) is distances.SIMILARITY
    assert distances.direction_of(tfmetric.layers.WeightedL1()).kind == "similarity"
    assert distances.direction_of(tfmetric.layers.Mahalanobis()).kind == "distance"

    class Scorer(keras.layers.Layer):
        is_similarity = True

    assert distances.direction_of(Scorer()) is distances.SIMILARITY
    assert distances.direction_of(keras.layers.Dense(1)) is None
    with pytest.raises(ValueError, match="distance"):
        distances.direction_of("nope")
    for direction, kind, rule in (
        (distances.SIMILARITY, "similarity", "score >= threshold"),
        (distances.get("inner_product"), "similarity", "score >= threshold"),
        (distances.DISSIMILARITY, "distance", "score <= threshold"),
        (distances.get("euclidean"), "distance", "score <= threshold"),
    ):
        assert (direction.kind, direction.match_rule) == (kind, rule)


def test_within_decides_as_the_written_comparison():
    values = np.array([0.1, 0.5, 0.9], "float32")
    threshold = np.float32(0.5)
    euclidean, inner = tfmetric.distances.get("euclidean"), tfmetric.distances.get("inner_product")
    np.testing.assert_array_equal(euclidean.within(values, threshold), [True, True, False])
    np.testing.assert_array_equal(inner.within(values, threshold), [False, True, True])
    np.testing.assert_array_equal(
        np.asarray(inner.within(keras.ops.convert_to_tensor(values), threshold)), [0, 1, 1]
    )


def test_euclidean_views():
    x = np.array([[3.0, 4.0], [0.0, 2.0]], "float32")
    np.testing.assert_allclose(tfmetric.distances.get("euclidean").euclidean_view(x), x)
    np.testing.assert_allclose(
        np.asarray(tfmetric.distances.get("cosine").euclidean_view(x)), [[0.6, 0.8], [0.0, 1.0]]
    )
    assert tfmetric.distances.get("manhattan").euclidean_view(x) is None
    assert tfmetric.distances.get("inner_product").euclidean_view(x) is None


def _stretched_blobs():
    # Classes apart along the first axis by 1; the second axis is noise of scale 5.
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], 20)
    x = np.stack([labels + 0.05 * rng.normal(size=60), 5.0 * rng.normal(size=60)], axis=1)
    return x.astype("float32"), labels


def test_clustering_scores_follow_a_learned_distance():
    x, labels = _stretched_blobs()
    assert tfmetric.metrics.clustering_scores(x, labels)["nmi"] < 0.5
    layer = tfmetric.layers.Mahalanobis()
    layer.build((None, 2))
    layer.set_weights([np.diag([10.0, 0.01]).astype("float32")])
    scores = tfmetric.metrics.clustering_scores(x, labels, distance=layer)
    assert scores["nmi"] == pytest.approx(1.0)
    keras.backend.clear_session()


def test_clustering_scores_without_a_euclidean_view_use_the_distance_matrix():
    x, labels = _stretched_blobs()
    x = x * np.array([10.0, 0.01], "float32")  # now the manhattan distance separates them
    d = np.abs(x[:, None] - x[None]).sum(-1)
    clusters = AgglomerativeClustering(
        n_clusters=3, metric="precomputed", linkage="average"
    ).fit_predict(d)
    expected = normalized_mutual_info_score(labels, clusters)
    scores = tfmetric.metrics.clustering_scores(x, labels, distance="manhattan")
    assert scores["nmi"] == pytest.approx(expected)
    assert scores["nmi"] == pytest.approx(1.0)
