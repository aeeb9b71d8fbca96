"""The MAP@R family from the top-k search (k = max R) against the numpy full-sort reference."""

import keras
import numpy as np
import pytest
from metric_references import metrics_from_relevance, ranked_relevance

import tfmetric
from tfmetric._src import topk
from tfmetric.metrics import _topk

FAMILY = [
    "precision_at_1",
    "recall_at_k",
    "r_precision",
    "map_at_r",
    "mean_reciprocal_rank",
]
CHECKED = ["precision_at_1", "recall_at_1", "recall_at_5", "r_precision", "map_at_r",
           "mean_reciprocal_rank"]  # fmt: skip


def _check(q, ql, g, gl, distance="euclidean"):
    similarity = tfmetric.distances.get(distance).is_similarity
    expected = metrics_from_relevance(ranked_relevance(q, ql, g, gl, distance, similarity))
    scores = tfmetric.metrics.evaluate_retrieval(
        q, ql, g, gl, distance=distance, k=(1, 5), metrics=FAMILY
    )
    for name in CHECKED:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    "distance,integer",
    [("euclidean", True), ("manhattan", True), ("inner_product", True), ("cosine", False)],
)
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_top_k_path_matches_full_sort_reference(distance, integer, leave_one_out, monkeypatch):
    # Small integers give many exact ties, also across the top-K boundary; a tiny
    # element budget forces several gallery blocks and query chunks.
    monkeypatch.setattr(_topk, "ELEMENT_BUDGET", 256)
    monkeypatch.setattr(_topk, "MAX_QUERY_CHUNK", 16)
    rng = np.random.default_rng(7)
    make = (lambda n: rng.integers(-2, 3, size=(n, 3))) if integer else (
        lambda n: rng.normal(size=(n, 3)))  # fmt: skip
    q, g = make(45).astype(np.float32), make(70).astype(np.float32)
    ql, gl = rng.integers(0, 5, size=45), rng.integers(0, 5, size=70)
    if leave_one_out:
        g, gl = None, None
    chunk, block = _topk._sizes(45, 70, 20)
    assert chunk < 45 and block < 70  # several query chunks and gallery blocks
    _check(q, ql, g, gl, distance)


def test_first_relevant_far_beyond_k_and_absent_labels():
    # Query 0's only relevant reference is the farthest (rank 50 > K = 2): its
    # reciprocal rank must still be 1/50. Label 9 has no reference (excluded).
    g = np.arange(50, dtype=np.float32)[:, None]
    gl = np.array([1] * 49 + [0])
    gl[:2] = 2
    q = np.array([[0.0], [0.5], [3.0]], np.float32)
    ql = np.array([0, 2, 9])
    with pytest.warns(UserWarning, match="1 of 3"):
        scores = tfmetric.metrics.evaluate_retrieval(q, ql, g, gl, k=(1,), metrics=FAMILY)
    # q0: rank 50 -> RR 1/50, MAP@R 0; q1 (R = 2): ranks 1, 2 -> RR 1, MAP@R 1.
    np.testing.assert_allclose(scores["mean_reciprocal_rank"], (1 / 50 + 1) / 2)
    np.testing.assert_allclose(scores["map_at_r"], 0.5)
    np.testing.assert_allclose(scores["precision_at_1"], 0.5)


def test_tie_across_the_boundary_is_pessimistic():
    # R = 2; distances 1 (relevant), 2 (relevant), 2 (non-relevant, stored last):
    # the tie at distance 2 crosses the top-K boundary and ranks the
    # non-relevant first, so the second relevant is at rank 3 (outside R).
    g = np.array([[1.0], [2.0], [2.0], [5.0]], np.float32)
    gl = np.array([0, 0, 1, 1])
    scores = tfmetric.metrics.evaluate_retrieval(
        np.zeros((1, 1), np.float32), [0], g, gl, metrics=["map_at_r", "r_precision"]
    )
    assert scores == {"map_at_r": 0.5, "r_precision": 0.5}


def test_second_pass_only_when_a_metric_needs_the_far_first_rank(monkeypatch):
    # Query 0's only relevant reference is at rank 50 > K: precision@1, MAP@R,
    # R-precision and recall@k for k <= K do not depend on that rank, so the
    # gallery is not scanned a second time; the reciprocal rank and recall@k
    # with k > K do.
    calls = []
    count = _topk._compiled_count
    monkeypatch.setattr(_topk, "_compiled_count", lambda d: calls.append(1) or count(d))
    g = np.arange(50, dtype=np.float32)[:, None]
    gl = np.array([1] * 49 + [0])
    gl[:2] = 2
    q = np.array([[0.0], [0.5]], np.float32)
    ql = np.array([0, 2])
    cheap = tfmetric.metrics.evaluate_retrieval(
        q, ql, g, gl, k=(1, 2), metrics=["precision_at_1", "map_at_r", "r_precision", "recall_at_k"]
    )
    assert not calls
    assert cheap == {"precision_at_1": 0.5, "map_at_r": 0.5, "r_precision": 0.5,
                     "recall_at_1": 0.5, "recall_at_2": 0.5}  # fmt: skip
    far = tfmetric.metrics.evaluate_retrieval(q, ql, g, gl, k=(49, 50), metrics=["recall_at_k"])
    assert calls
    assert far == {"recall_at_49": 0.5, "recall_at_50": 1.0}
    rr = tfmetric.metrics.evaluate_retrieval(q, ql, g, gl, metrics=["mean_reciprocal_rank"])
    np.testing.assert_allclose(rr["mean_reciprocal_rank"], (1 / 50 + 1) / 2)


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine", "inner_product"])
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_grouped_selection_and_search_keys_match_the_reference(distance, leave_one_out, monkeypatch):
    # The gallery is wide enough for the selection through group maxima (made
    # small here) and the keys (2<q, g> - ||g||², cosines, inner products) are
    # compared on integer data with many ties, across the boundary too.
    monkeypatch.setattr(topk, "GROUP", 2)
    monkeypatch.setattr(topk, "LANES", 4)
    monkeypatch.setattr(topk, "GROUPED_MIN_RATIO", 1)
    rng = np.random.default_rng(5)
    if distance == "cosine":
        # Cosines of small integer vectors tie in exact arithmetic but not in
        # float: normal data for the cosine (as in the test above).
        q, g = rng.normal(size=(40, 3)), rng.normal(size=(200, 3))
    else:
        q, g = rng.integers(-2, 3, size=(40, 3)), rng.integers(-2, 3, size=(200, 3))
    q, g = q.astype(np.float32), g.astype(np.float32)
    ql, gl = rng.integers(0, 5, size=40), rng.integers(0, 5, size=200)
    if leave_one_out:
        q, ql = g, gl
    # K (one less leave-one-out), the sentinels (and leave-one-out the query).
    width = _topk.max_relevant(ql, gl) + _topk.TIE_SLOTS
    _, block = _topk._sizes(len(q), len(g), width)
    assert topk._grouped(block, width)  # the grouped selection runs
    if leave_one_out:
        g, gl = None, None
    _check(q, ql, g, gl, distance)


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_default_grouped_selection_with_sets_matches_a_sorted_reference(leave_one_out):
    # The shipped configuration (groups of 16 columns in tiles of 256, the best
    # maximum of each set first) on a gallery wide enough for sets of 2 (leave-one-out)
    # and 4 groups, with many exact ties: integer embeddings, squared distances exact.
    rng = np.random.default_rng(11)
    n, classes = (2048, 80) if leave_one_out else (4096, 150)
    g = rng.integers(0, 3, size=(n, 8)).astype(np.float32)
    gl = rng.integers(0, classes, size=n)
    q, ql = (g, gl) if leave_one_out else (
        rng.integers(0, 3, size=(256, 8)).astype(np.float32), rng.integers(0, classes + 2, size=256))  # fmt: skip
    # K (one less leave-one-out), the sentinels (and leave-one-out the query).
    width = _topk.max_relevant(ql, gl) + _topk.TIE_SLOTS
    _, block = _topk._sizes(len(q), n, width)
    assert topk._grouped(block, width)
    assert topk._set_size(block // topk.GROUP, width) == (2 if leave_one_out else 4)
    # Reference: each query's references sorted by squared distance, the
    # non-relevant ones first among equal distances.
    d = ((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(axis=2)
    relevant = gl[None, :] == ql[:, None]
    if leave_one_out:
        d[np.arange(n), np.arange(n)] = np.inf  # the query itself: last, then dropped
    order = np.lexsort((relevant, d), axis=1)
    ranked = np.take_along_axis(relevant, order, axis=1)[:, : n - int(leave_one_out)]
    expected = metrics_from_relevance(list(ranked.astype(int)))
    if leave_one_out:
        scores = tfmetric.metrics.evaluate_retrieval(q, ql, k=(1, 5), metrics=FAMILY)
    else:
        # Two queries' labels are absent from the gallery (R = 0).
        with pytest.warns(UserWarning, match="2 of 256 queries have no relevant reference"):
            scores = tfmetric.metrics.evaluate_retrieval(q, ql, g, gl, k=(1, 5), metrics=FAMILY)
    for name in CHECKED:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-9, err_msg=name)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_query_chunks_under_jax_keep_the_temporaries_within_budget(backend, monkeypatch):
    # Under JAX a call's temporaries (the score matrix and ~15% more) are
    # allocated anew per call: chunks keep them within `topk.JAX_TEMP_BUDGET` where
    # that leaves at least `JAX_MIN_QUERY_CHUNK` queries, and are never larger
    # than TensorFlow's.
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    for n, tf_sizes in [(20_000, (1000, 20_224)), (100_000, (256, 100_352))]:
        chunk, block = _topk._sizes(n, n, 139)
        assert block == tf_sizes[1]  # whole tiles and sets for the grouped selection
        if backend == "jax":
            assert topk.JAX_MIN_QUERY_CHUNK <= chunk < tf_sizes[0]
            assert topk.JAX_TEMP_BYTES * chunk * block <= 32 << 20  # glibc's largest threshold
            assert -(-n // chunk) * chunk - n < 8 * -(-n // chunk)  # equal chunks
        else:
            assert chunk == tf_sizes[0]  # equal chunks of the 1,024 (256 at 100k) limit
    assert _topk._sizes(20_000, 20_000, 139)[0] == (336 if backend == "jax" else 1000)
    assert _topk._sizes(100_000, 100_000, 139)[0] == (64 if backend == "jax" else 256)
    # Fewer queries than a chunk: one chunk, never above the limit.
    assert _topk._sizes(150, 20_000, 139)[0] == 256
    # 300k: no chunk of >= 48 queries fits; the sizes are TensorFlow's.
    assert _topk._sizes(300_000, 300_000, 139) == _sizes_under("tensorflow", monkeypatch)


def _sizes_under(backend, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(keras.backend, "backend", lambda: backend)
        return _topk._sizes(300_000, 300_000, 139)


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX's compiled temporaries: run by the JAX pass"
)
@pytest.mark.parametrize("n", [20_000, 100_000])
def test_jax_search_temporaries_are_what_the_chunk_sizes_assume(n):
    # The premise of `JAX_TEMP_BYTES`: XLA's temporaries of the compiled search
    # (with its options) at the chosen sizes stay within glibc's largest mmap
    # threshold (32 MiB), so that their memory is reused from call to call.
    import jax

    width = 139
    chunk, block = _topk._sizes(n, n, width)
    search = _topk._compiled_search(tfmetric.distances.get("euclidean"), width)
    shapes = [(chunk, 128), (1, block, 128), (1, block)]
    args = [jax.ShapeDtypeStruct(shape, np.float32) for shape in shapes]
    temp = search.lower(*args).compile().memory_analysis().temp_size_in_bytes
    assert 4 * chunk * block <= temp <= topk.JAX_TEMP_BYTES * chunk * block
    assert temp <= 32 << 20


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "inner_product"])
@pytest.mark.parametrize("magnitude", [1e-30, 1e18])
def test_search_keys_at_extreme_magnitudes(distance, magnitude):
    # The keys are computed on embeddings divided by a power of two near their
    # largest magnitude: tiny and huge embeddings rank as the unit-sized ones.
    rng = np.random.default_rng(9)
    q = rng.normal(size=(30, 4)).astype(np.float32)
    g = rng.normal(size=(60, 4)).astype(np.float32)
    ql, gl = rng.integers(0, 3, size=30), rng.integers(0, 3, size=60)
    similarity = tfmetric.distances.get(distance).is_similarity
    expected = metrics_from_relevance(ranked_relevance(q, ql, g, gl, distance, similarity))
    scores = tfmetric.metrics.evaluate_retrieval(
        q * np.float32(magnitude), ql, g * np.float32(magnitude), gl,
        distance=distance, k=(1, 5), metrics=FAMILY,
    )  # fmt: skip
    for name in CHECKED:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-5, err_msg=name)


def test_cosine_keys_keep_a_zero_vector_at_distance_one():
    # A zero reference has cosine distance 1 to every query (its direction is
    # undefined): after the references at distance < 1, before those beyond.
    g = np.array([[1.0, 0.1], [0.0, 0.0], [-1.0, 0.2], [0.9, 0.3], [-1.0, -0.1]], np.float32)
    gl = np.array([1, 0, 0, 1, 1])
    q = np.array([[1.0, 0.0]], np.float32)
    # Ranked by cosine distance: g0, g3 (label 1), g1 (distance 1, label 0),
    # then g2 (label 0), g4: the first relevant at rank 3, none in the top R = 2.
    scores = tfmetric.metrics.evaluate_retrieval(
        q, [0], g, gl, metrics=["mean_reciprocal_rank", "r_precision"], distance="cosine"
    )
    np.testing.assert_allclose(scores["mean_reciprocal_rank"], 1 / 3)
    np.testing.assert_allclose(scores["r_precision"], 0.0)


@pytest.mark.parametrize("tied", [3, _topk.TIE_SLOTS + 4])
def test_tie_across_the_boundary_among_or_past_the_sentinels(tied, monkeypatch):
    # R = 2: relevant references at distances 1 and 2, `tied` non-relevant ones
    # also at 2 (stored first). Pessimistic ties put the second relevant at rank
    # 2 + tied. A tie that ends among the sentinels needs no second pass over
    # the gallery; one that runs past them does, with the same ranks.
    calls = []
    count = _topk._compiled_count
    monkeypatch.setattr(_topk, "_compiled_count", lambda d: calls.append(1) or count(d))
    g = np.array([[2.0]] * tied + [[1.0], [2.0], [7.0]], np.float32)
    gl = np.array([1] * tied + [0, 0, 1])
    q = np.zeros((1, 1), np.float32)
    scores = tfmetric.metrics.evaluate_retrieval(
        q, [0], g, gl, k=(2, tied + 2), metrics=["map_at_r", "r_precision", "recall_at_k"]
    )
    expected = metrics_from_relevance(
        ranked_relevance(q, np.array([0]), g, gl, "euclidean"), ks=(2, tied + 2)
    )
    assert scores["map_at_r"] == expected["map_at_r"] == 0.5
    assert scores["r_precision"] == 0.5
    assert scores[f"recall_at_{tied + 2}"] == expected[f"recall_at_{tied + 2}"] == 1.0
    assert bool(calls) == (tied + 1 > _topk.TIE_SLOTS)


def test_drop_own_removes_the_query_itself_else_the_last_slot():
    # Leave-one-out the search fetches one neighbour more and drops the query's
    # own position afterwards: where it is among the results, that slot goes;
    # where it is not (more references at its key than slots), the last one.
    keys = np.array([[9.0, 8.0, 7.0, 6.0], [9.0, 9.0, 9.0, 9.0], [5.0, 4.0, 3.0, -np.inf]])
    positions = np.array([[4, 0, 2, 3], [7, 8, 5, 6], [1, 0, 3, -1]])
    kept_keys, kept = _topk._drop_own(keys, positions, np.array([0, 2, 1]))
    np.testing.assert_array_equal(kept, [[4, 2, 3], [7, 8, 5], [0, 3, -1]])
    np.testing.assert_array_equal(kept_keys, [[9.0, 7.0, 6.0], [9.0, 9.0, 9.0], [4.0, 3.0, -np.inf]])


def test_a_distance_that_is_not_finite_on_zero_rows_never_returns_the_padding(monkeypatch):
    # The last gallery block is padded with zero rows. A user's distance may be
    # NaN or inf there (here: a cosine similarity that is NaN for a zero row): the
    # padding still never ranks (it would push references out of the top K),
    # and the values match the reference ranking.
    from keras import ops

    class NaNCosine(tfmetric.distances.Distance):
        name = "nan_cosine_test"
        is_similarity = True

        def pairwise(self, x, y):
            norms = ops.sqrt(ops.sum(x * x, axis=1))[:, None] * ops.sqrt(ops.sum(y * y, axis=1))
            # NaN for a zero row, as numpy's positive NaN (x86 arithmetic's own
            # NaN is negative and would sort last by chance).
            return ops.where(norms > 0, ops.matmul(x, ops.transpose(y)) / norms, np.nan)

    monkeypatch.setattr(topk, "GROUP", 2)
    monkeypatch.setattr(topk, "LANES", 4)
    monkeypatch.setattr(topk, "GROUPED_MIN_RATIO", 1)
    rng = np.random.default_rng(3)
    q = rng.normal(size=(5, 3)).astype(np.float32)
    g = rng.normal(size=(201, 3)).astype(np.float32)
    ql, gl = rng.integers(0, 8, size=5), rng.integers(0, 8, size=201)
    width = _topk.max_relevant(ql, gl) + _topk.TIE_SLOTS
    _, block = _topk._sizes(5, 201, width)
    assert block >= 201 + 3  # one block, padded to whole groups and sets
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    similarity = unit(q) @ unit(g).T
    relevance = gl[np.argsort(-similarity, axis=1, kind="stable")] == ql[:, None]
    expected = metrics_from_relevance(relevance)
    scores = tfmetric.metrics.evaluate_retrieval(
        q, ql, g, gl, distance=NaNCosine(), k=(1, 5), metrics=FAMILY
    )
    for name in CHECKED:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-6, err_msg=name)


def test_cosine_exact_ties_rank_alike_on_both_paths():
    # The audit's case: a relevant and a non-relevant reference both orthogonal to the
    # query (cosine distance exactly 1). Pessimistic ties: P@1 = MAP@R = 0, mAP = 0.5,
    # whichever metrics are asked for (they used to select different paths' tie-breaks).
    query = np.array([[1.0, 0.0, -0.5]], np.float32)
    gallery = np.array([[0.0, 1.5, 0.0], [1.0, 0.5, 2.0]], np.float32)
    assert np.asarray(tfmetric.distances.get("cosine")(query, gallery)).tolist() == [[1.0, 1.0]]
    top_k = tfmetric.metrics.evaluate_retrieval(
        query, [0], gallery, [0, 1], distance="cosine", metrics=["precision_at_1", "map_at_r"]
    )
    ranking = tfmetric.metrics.evaluate_retrieval(
        query, [0], gallery, [0, 1], distance="cosine",
        metrics=["precision_at_1", "map_at_r", "mean_average_precision"],
    )
    assert top_k == {"precision_at_1": 0.0, "map_at_r": 0.0}
    assert ranking == {"precision_at_1": 0.0, "map_at_r": 0.0, "mean_average_precision": 0.5}
