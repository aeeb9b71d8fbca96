import warnings

import numpy as np
import pytest
from metric_references import metrics_from_relevance, mutual_information_scores, ranked_relevance

import tfmetric
from tfmetric.metrics import _ranking

RANKING = [
    "precision_at_1",
    "recall_at_1",
    "recall_at_5",
    "r_precision",
    "map_at_r",
    "mean_average_precision",
    "mean_reciprocal_rank",
]


def _ranking_only(*args, **kwargs):
    metrics = [m for m in tfmetric.metrics.retrieval.RANKING_METRICS]
    return tfmetric.metrics.evaluate_retrieval(*args, metrics=metrics, **kwargs)


def test_hand_checked_leave_one_out():
    # Points on a line, labels 0 1 0 1. Rankings (pessimistic ties, self excluded):
    # q0: 1(-) 2(+) 3(-)      -> ranks of relevant: [2]
    # q1: {0, 2}(-, tie) 3(+) -> [3]
    # q2: {1, 3}(-, tie) 0(+) -> [3]
    # q3: 2(-) 1(+) 0(-)      -> [2]
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([0, 1, 0, 1])
    scores = _ranking_only(x, y, k=(1, 2, 3))
    assert scores["precision_at_1"] == 0.0
    assert scores["recall_at_1"] == 0.0
    assert scores["recall_at_2"] == 0.5
    assert scores["recall_at_3"] == 1.0
    assert scores["r_precision"] == 0.0  # R = 1 for every query
    assert scores["map_at_r"] == 0.0
    np.testing.assert_allclose(
        scores["mean_average_precision"], (1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4
    )
    np.testing.assert_allclose(scores["mean_reciprocal_rank"], (1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)


def test_hand_checked_map_at_r_with_gallery():
    # One query, R = 3 relevant references at ranks 1, 3, 4 of 5.
    # MAP@R = (1/3) * (1/1 + 2/3) [rank 4 > R]; AP = (1/3)(1 + 2/3 + 3/4);
    # R-precision = 2/3.
    q = np.array([[0.0, 0.0]])
    g = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [5.0, 0.0]])
    gl = np.array([7, 3, 7, 7, 3])
    scores = _ranking_only(q, [7], g, gl, k=(1, 2))
    np.testing.assert_allclose(scores["map_at_r"], (1 + 2 / 3) / 3, rtol=1e-6)
    np.testing.assert_allclose(scores["mean_average_precision"], (1 + 2 / 3 + 3 / 4) / 3, rtol=1e-6)
    np.testing.assert_allclose(scores["r_precision"], 2 / 3, rtol=1e-6)
    assert scores["precision_at_1"] == 1.0
    assert scores["mean_reciprocal_rank"] == 1.0


def test_ties_are_pessimistic():
    # Relevant and non-relevant references at exactly the same distance: the
    # non-relevant one ranks first, whatever the storage order.
    q = np.array([[0.0]])
    for g, gl in [([[1.0], [-1.0]], [0, 1]), ([[-1.0], [1.0]], [1, 0])]:
        scores = _ranking_only(q, [0], np.array(g), np.array(gl), k=(1, 2))
        assert scores["precision_at_1"] == 0.0
        assert scores["recall_at_2"] == 1.0
        assert scores["mean_reciprocal_rank"] == 0.5
        assert scores["map_at_r"] == 0.0


def test_ties_among_relevant_do_not_matter():
    q = np.array([[0.0]])
    g = np.array([[1.0], [1.0], [-1.0], [2.0]])
    scores = _ranking_only(q, [0], g, np.array([0, 0, 1, 0]), k=(1,))
    # Ranking: -1(-), 1(+), 1(+), 2(+): AP = (1/2 + 2/3 + 3/4)/3, R-precision 2/3.
    np.testing.assert_allclose(
        scores["mean_average_precision"], (1 / 2 + 2 / 3 + 3 / 4) / 3, rtol=1e-6
    )
    np.testing.assert_allclose(scores["r_precision"], 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(scores["map_at_r"], (1 / 2 + 2 / 3) / 3, rtol=1e-6)


def test_leave_one_out_keeps_duplicates_of_the_query():
    x = np.array([[0.0], [0.0], [5.0], [5.0]])
    scores = _ranking_only(x, np.array([0, 0, 1, 1]))
    assert scores["precision_at_1"] == 1.0
    assert scores["map_at_r"] == 1.0
    # A duplicate with another label is kept too (and wins the pessimistic tie).
    scores = _ranking_only(x, np.array([0, 1, 1, 0]), k=(1,))
    assert scores["precision_at_1"] == 0.0


def test_r_equals_zero_is_excluded_with_a_warning():
    q = np.array([[0.0], [10.0]])
    g = np.array([[0.5], [9.0]])
    with pytest.warns(UserWarning, match="1 of 2 queries"):
        scores = _ranking_only(q, [0, 5], g, [0, 1])
    assert scores["precision_at_1"] == 1.0  # only the first query counts
    with pytest.raises(ValueError, match="No query has a relevant"):
        _ranking_only(q, [4, 5], g, [0, 1])
    # Leave-one-out: a singleton class has R = 0.
    with pytest.warns(UserWarning, match="1 of 3"):
        scores = _ranking_only(np.array([[0.0], [0.1], [9.0]]), [0, 0, 1])
    assert scores["map_at_r"] == 1.0


@pytest.mark.parametrize(
    "distance,integer",
    [
        ("euclidean", True),
        ("squared_euclidean", True),
        ("manhattan", True),
        ("inner_product", True),
        ("cosine", False),
    ],
)
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_against_numpy_reference(distance, integer, leave_one_out):
    rng = np.random.default_rng(1)
    if integer:  # small integers: many exact ties, computed exactly in float32
        q = rng.integers(-2, 3, size=(30, 3)).astype(np.float32)
        g = rng.integers(-2, 3, size=(40, 3)).astype(np.float32)
    else:
        q = rng.normal(size=(30, 3)).astype(np.float32)
        g = rng.normal(size=(40, 3)).astype(np.float32)
    ql = rng.integers(0, 4, size=30)
    gl = rng.integers(0, 4, size=40)
    if leave_one_out:
        g, gl = None, None
    similarity = tfmetric.distances.get(distance).is_similarity
    expected = metrics_from_relevance(ranked_relevance(q, ql, g, gl, distance, similarity))
    scores = _ranking_only(q, ql, g, gl, distance=distance, k=(1, 5))
    for name in RANKING:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-5, err_msg=name)


def test_a_learned_distance_ranks_by_its_current_weights():
    # Evaluated, trained (here: its weights set), evaluated again, as the RetrievalEvaluation
    # callback does each epoch: every evaluation ranks by the weights of the moment (under JAX
    # a compiled search holds the values the weights had when it was traced). WeightedL1 ranks
    # pairs as the manhattan distance between |a| * x and |a| * y does.
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 10)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    x[:, :3] += y[:, None]  # the classes differ in the first three features only
    layer = tfmetric.layers.WeightedL1()
    layer.build((None, 6))
    distance = tfmetric.distances.get(layer)
    seen = set()
    for a in ([1.0] * 6, [0.05] * 3 + [3.0] * 3, [3.0] * 3 + [0.0] * 3):
        layer.feature_weights.assign(np.array(a, np.float32))
        relevance = ranked_relevance(x * np.float32(a), y, None, None, "manhattan", False)
        expected = metrics_from_relevance(relevance)
        scores = _ranking_only(x, y, distance=distance, k=(1, 5))
        for name in RANKING:
            np.testing.assert_allclose(scores[name], expected[name], rtol=1e-5, err_msg=name)
        seen.add(round(scores["map_at_r"], 6))
    assert len(seen) == 3  # the weights changed the ranking each time


def test_chunked_computation_matches_reference(monkeypatch):
    # A tiny element budget forces many query chunks (the last one padded).
    monkeypatch.setattr(_ranking, "ELEMENT_BUDGET", 64)
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, size=(37, 2)).astype(np.float32)
    y = rng.integers(0, 3, size=37)
    expected = metrics_from_relevance(ranked_relevance(x, y, None, None, "euclidean"))
    scores = _ranking_only(x, y)
    assert _ranking._chunk_size(37, 37 + 20) < 37
    for name in RANKING:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_query_chunks_of_the_counting_path_per_backend(backend, monkeypatch):
    # Powers of two within `ELEMENT_BUDGET`; under JAX also within
    # `JAX_ELEMENT_BUDGET` (the matrices passed between the three calls stay
    # in the cache), down to `JAX_MIN_QUERY_CHUNK`, never above TensorFlow's.
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    sizes = [_ranking._chunk_size(n, n) for n in (2_048, 20_000, 100_000, 1_000_000)]
    assert sizes == ([1024, 64, 32, 16] if backend == "jax" else [1024, 512, 128, 16])
    assert _ranking._chunk_size(10, 20_000) == 16  # fewer queries: the next power of two


def test_large_r_single_class_window():
    # Two classes, R up to 59: the relevant window is most of the gallery.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = (np.arange(100) < 60).astype(np.int64)
    expected = metrics_from_relevance(ranked_relevance(x, y, None, None, "euclidean"))
    scores = _ranking_only(x, y)
    for name in RANKING:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-5, err_msg=name)


def test_single_metric_functions_agree_with_reference():
    rng = np.random.default_rng(4)
    q = rng.normal(size=(20, 3))
    g = rng.normal(size=(25, 3))
    ql, gl = rng.integers(0, 3, 20), rng.integers(0, 3, 25)
    expected = metrics_from_relevance(ranked_relevance(q, ql, g, gl, "euclidean"), ks=(3,))
    m = tfmetric.metrics
    np.testing.assert_allclose(m.precision_at_1(q, ql, g, gl), expected["precision_at_1"])
    np.testing.assert_allclose(m.recall_at_k(q, ql, g, gl, k=3), expected["recall_at_3"])
    np.testing.assert_allclose(m.r_precision(q, ql, g, gl), expected["r_precision"], rtol=1e-6)
    np.testing.assert_allclose(m.map_at_r(q, ql, g, gl), expected["map_at_r"], rtol=1e-6)
    np.testing.assert_allclose(
        m.mean_average_precision(q, ql, g, gl), expected["mean_average_precision"], rtol=1e-6
    )
    np.testing.assert_allclose(
        m.mean_reciprocal_rank(q, ql, g, gl), expected["mean_reciprocal_rank"], rtol=1e-6
    )


def test_k_larger_than_gallery_is_a_hit_rate():
    q = np.array([[0.0]])
    g = np.array([[1.0], [2.0]])
    assert tfmetric.metrics.recall_at_k(q, [0], g, [1, 0], k=100) == 1.0


def test_cmc_curve_against_reference():
    rng = np.random.default_rng(5)
    q = rng.normal(size=(25, 2))
    g = rng.normal(size=(30, 2))
    ql, gl = rng.integers(0, 5, 25), rng.integers(0, 5, 30)
    lists = ranked_relevance(q, ql, g, gl, "euclidean")
    first = np.array([np.argmax(r) + 1 for r in lists if r.sum() > 0])
    expected = [np.mean(first <= k) for k in range(1, 8)]
    np.testing.assert_allclose(tfmetric.metrics.cmc_curve(q, ql, g, gl, max_rank=7), expected)



@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("max_rank", [2, 40])
@pytest.mark.parametrize("integer", [False, True])
def test_cmc_curve_from_the_top_k_search_with_first_ranks_beyond_k(
    leave_one_out, max_rank, integer, monkeypatch
):
    # Two references per identity (K <= 2) among 120: most first matches rank
    # beyond K, so a long curve needs their exact ranks (the second pass) and
    # a short one none; integer coordinates tie (pessimistic ranks), normal
    # ones do not (no tie across the K-th distance calls for the second pass).
    # The top-k search serves both: the whole-ranking path is never taken.
    monkeypatch.setattr(_ranking, "relevant_ranks", None)
    rng = np.random.default_rng(12)

    def data(size):
        return rng.integers(-3, 4, size=size) if integer else rng.normal(size=size)

    g = data((120, 2)).astype(np.float32)
    gl = np.repeat(np.arange(60), 2)
    if leave_one_out:
        q, ql, g_arg, gl_arg = g, gl, None, None
    else:
        q = data((50, 2)).astype(np.float32)
        ql, g_arg, gl_arg = rng.integers(0, 60, 50), g, gl
    lists = ranked_relevance(q, ql, g_arg, gl_arg, "euclidean")
    first = np.array([np.argmax(r) + 1 for r in lists if r.sum() > 0])
    assert np.mean(first > 2) > 0.5  # most first matches lie beyond K
    expected = [np.mean(first <= k) for k in range(1, max_rank + 1)]
    got = tfmetric.metrics.cmc_curve(q, ql, g_arg, gl_arg, max_rank=max_rank)
    np.testing.assert_allclose(got, expected)

def test_evaluate_retrieval_returns_all_keys():
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(size=(10, 2)), rng.normal(size=(10, 2)) + 20])
    y = np.repeat([4, 9], 10)
    scores = tfmetric.metrics.evaluate_retrieval(x, y, k=(1, 5))
    assert set(scores) == {
        "precision_at_1", "recall_at_1", "recall_at_5", "r_precision", "map_at_r",
        "mean_average_precision", "mean_reciprocal_rank", "nmi", "ami",
    }  # fmt: skip
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["map_at_r"] == 1.0 and scores["nmi"] == 1.0 and scores["ami"] == 1.0


def test_nmi_against_contingency_reference():
    # Two far-apart blobs: k-means must find them; labels split one blob.
    x = np.array([[0.0], [0.1], [0.2], [0.3], [100.0], [100.1], [100.2], [100.3]])
    y = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = tfmetric.metrics.clustering_scores(x, y)
    np.testing.assert_allclose(scores["nmi"], mutual_information_scores(y, clusters), rtol=1e-6)
    assert scores["ami"] < scores["nmi"]  # chance-adjusted


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"query": np.zeros(5)}, ValueError, "`query` must be a 2-D"),
        ({"query_labels": np.zeros(4, np.int64)}, ValueError, "`query_labels` has 4"),
        ({"query_labels": np.full(5, 0.5)}, ValueError, "integer class labels"),
        ({"query": np.full((5, 2), np.nan)}, ValueError, "NaN"),
        ({"gallery": np.zeros((3, 2))}, ValueError, "`gallery_labels` is required"),
        ({"gallery_labels": np.zeros(3, np.int64)}, ValueError, "without `gallery`"),
        ({"gallery": np.zeros((3, 3)), "gallery_labels": [0, 0, 0]}, ValueError, "same embedding"),
        ({"k": 0}, ValueError, "`k` must be an integer >= 1"),
        ({"metrics": ["accuracy"]}, ValueError, "`metrics`"),
        ({"distance": "hamming"}, ValueError, "Unknown `distance`"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"query": np.zeros((5, 2)), "query_labels": np.zeros(5, np.int64)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        tfmetric.metrics.evaluate_retrieval(**args)


def test_no_warning_when_every_query_has_relevant():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ranking_only(np.array([[0.0], [1.0]]), [0, 0])


def test_r_equals_one_gallery():
    # Each query has exactly one relevant reference: MAP@R = R-precision = P@1.
    q = np.array([[0.0], [10.0]])
    g = np.array([[0.4], [0.3], [10.2], [11.0]])
    gl = np.array([0, 1, 1, 2])
    # q0 (label 0): 0.3(-) 0.4(+) -> rank 2; q1 (label 2): 10.2(-) 11.0(+) -> rank 2.
    scores = _ranking_only(q, [0, 2], g, gl, k=(1, 2))
    assert scores["precision_at_1"] == scores["map_at_r"] == scores["r_precision"] == 0.0
    assert scores["recall_at_2"] == 1.0
    assert scores["mean_average_precision"] == scores["mean_reciprocal_rank"] == 0.5


def test_low_precision_inputs_are_upcast():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 4)).astype(np.float16)
    y = rng.integers(0, 3, 30)
    expected = metrics_from_relevance(
        ranked_relevance(x.astype(np.float32), y, None, None, "euclidean")
    )
    scores = _ranking_only(x, y)
    np.testing.assert_allclose(scores["map_at_r"], expected["map_at_r"], rtol=1e-5)


def _assert_matches_reference(x, y, gallery=None, gallery_labels=None, distance="euclidean"):
    similarity = tfmetric.distances.get(distance).is_similarity
    expected = metrics_from_relevance(
        ranked_relevance(x, y, gallery, gallery_labels, distance, similarity)
    )
    scores = _ranking_only(x, y, gallery, gallery_labels, distance=distance, k=(1, 5))
    for name in RANKING:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-6, err_msg=name)


def test_crowded_grid_cells_are_counted_exactly(monkeypatch):
    # One far relevant reference stretches each query's grid: the other relevant
    # distances share a few cells, more than the first compiled probes cover, so
    # chunks are run again with more probes; non-relevant references lie between
    # them and exactly on them.
    used = []
    compiled = _ranking._compiled_kernels

    def spy(distance, window, cells, steps):
        used.append(steps)
        return compiled(distance, window, cells, steps)

    monkeypatch.setattr(_ranking, "_compiled_kernels", spy)
    rng = np.random.default_rng(5)
    gallery = np.concatenate(
        [
            rng.normal(size=(30, 3)) * 0.1,  # class 0, near the origin
            [[50.0, 0.0, 0.0]],  # class 0, far
            rng.normal(size=(30, 3)) * 0.1,  # class 1, mixed in
        ]
    ).astype(np.float32)
    gallery[40] = gallery[3]  # a non-relevant reference at a relevant distance
    labels = np.array([0] * 31 + [1] * 30)
    query = np.zeros((4, 3), np.float32)
    query[1] = gallery[3]
    _assert_matches_reference(query, np.zeros(4, np.int64), gallery, labels)
    assert max(used) > _ranking.INITIAL_STEPS
    _assert_matches_reference(gallery, labels)


def test_degenerate_grids():
    # Every relevant reference at one distance (span 0), R = 1, a query without
    # relevant references in a chunk with others, and coinciding points.
    gallery = np.array(
        [[1, 0], [-1, 0], [0, 1], [0, -1], [1, 0], [2, 0], [0, 0], [0, 0]], np.float32
    )
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    query = np.zeros((3, 2), np.float32)
    with pytest.warns(UserWarning, match="R = 0"):
        scores = _ranking_only(query, np.array([0, 2, 9]), gallery, labels)
    # Query label 0: 4 relevant at distance 1; closer non-relevant (two at 0) and
    # one more at distance 1 (pessimistic): ranks 3..7 hold 4 relevant of 5.
    # Query label 2: its single relevant at distance 0 ties another at 0: rank 2.
    ap_0 = (1 / 4 + 2 / 5 + 3 / 6 + 4 / 7) / 4
    np.testing.assert_allclose(scores["mean_average_precision"], (ap_0 + 1 / 2) / 2, rtol=1e-6)
    with pytest.warns(UserWarning, match="R = 0"):
        _assert_matches_reference(gallery, labels)


@pytest.mark.parametrize("workers", [1, 3])
def test_concurrent_chunks_match_reference(monkeypatch, workers):
    # Many small chunks, run by one thread or by several at once.
    from tfmetric._src import chunks

    monkeypatch.setattr(_ranking, "ELEMENT_BUDGET", 256)
    monkeypatch.setattr(chunks, "MAX_WORKERS", workers)
    monkeypatch.setattr(chunks.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    y = rng.integers(0, 6, size=90)
    assert _ranking._chunk_size(90, 90 + 30) <= 8
    _assert_matches_reference(x, y, distance="cosine")


def test_bfloat16_arrays_as_a_mixed_bfloat16_model_predicts_them():
    import ml_dtypes

    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(6), 5)
    x = (np.eye(6)[labels] * 3 + rng.normal(size=(30, 6))).astype(ml_dtypes.bfloat16)
    exact = x.astype("float32")  # bfloat16 values are exact in float32
    reference = metrics_from_relevance(ranked_relevance(exact, labels, None, None, "euclidean"))
    got = tfmetric.metrics.evaluate_retrieval(x, labels, metrics=("map_at_r", "precision_at_1"))
    for name in ("map_at_r", "precision_at_1"):
        assert got[name] == pytest.approx(reference[name], abs=1e-9), name
    index = tfmetric.index.ExactIndex()
    index.add(x, labels=labels)
    ids, distances, _ = index.search(x[:3], k=2)
    squared = ((exact[:3, None, :] - exact[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ids, np.argsort(squared, axis=1, kind="stable")[:, :2])
    np.testing.assert_allclose(distances, np.sqrt(np.sort(squared, axis=1)[:, :2]), atol=1e-3)
