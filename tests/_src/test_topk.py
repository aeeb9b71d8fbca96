"""The one exact top-k search against a numpy stable-argsort reference."""

import keras
import numpy as np
import pytest

import tfmetric
from tfmetric._src import topk


def _reference(queries, gallery, k, similarity=False, exclude_self=False):
    """Stable argsort of the float64 distances: ties keep the lower gallery row first."""
    if similarity:
        scores = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    else:
        diff = queries[:, None, :].astype(np.float64) - gallery[None, :, :]
        scores = -np.sqrt(np.sum(diff**2, axis=2))
    if exclude_self:
        scores[np.arange(len(queries)), np.arange(len(queries))] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(scores, order, axis=1)
    found = np.isfinite(values)
    positions = np.where(found, order, -1)
    values = values if similarity else -values
    return positions, values, found


@pytest.fixture(scope="module")
def integer_data():
    # Small integer coordinates: many exact ties, distances exact in float32.
    rng = np.random.default_rng(3)
    queries = rng.integers(-2, 3, size=(13, 3)).astype(np.float32)
    gallery = rng.integers(-2, 3, size=(29, 3)).astype(np.float32)
    return queries, gallery


@pytest.mark.parametrize("block", [29, 8, 3])
@pytest.mark.parametrize("k", [1, 7, 29])
def test_search_matches_stable_argsort_with_ties(integer_data, block, k):
    queries, gallery = integer_data
    distance = tfmetric.distances.get("euclidean")
    positions, values = topk.search(queries, gallery, distance, k, 5, block)
    expected_positions, expected_values, _ = _reference(queries, gallery, k)
    _, full, _ = _reference(queries, gallery, len(gallery))
    assert np.any(full[:, k - 1] == full[:, min(k, len(gallery) - 1)])  # ties at the cut
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_allclose(values, expected_values, rtol=1e-6)


def test_k_larger_than_the_gallery_pads_with_no_result(integer_data):
    queries, gallery = integer_data
    distance = tfmetric.distances.get("euclidean")
    positions, values = topk.search(queries, gallery[:5], distance, 8, 4, 2)
    expected_positions, expected_values, _ = _reference(queries, gallery[:5], 5)
    np.testing.assert_array_equal(positions[:, :5], expected_positions)
    np.testing.assert_allclose(values[:, :5], expected_values, rtol=1e-6)
    assert np.all(positions[:, 5:] == -1)
    assert np.all(values[:, 5:] == np.inf)


def test_similarity_and_leave_one_out(integer_data):
    queries, _ = integer_data
    distance = tfmetric.distances.get("inner_product")
    positions, values = topk.search(queries, queries, distance, 13, 4, 5, exclude_self=True)
    expected_positions, expected_values, found = _reference(
        queries, queries, 13, similarity=True, exclude_self=True
    )
    assert not found[:, -1].any()  # 12 other queries, then no result
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_array_equal(values[:, :12], expected_values[:, :12])
    assert np.all(values[:, 12] == -np.inf)
    assert not np.any(positions == np.arange(13)[:, None])


def test_gallery_blocks_pad_and_mask():
    gallery = np.arange(10, dtype=np.float32).reshape(5, 2)
    blocks, valid, ids = topk.gallery_blocks(gallery, 2, np.arange(5))
    assert blocks.shape == (3, 2, 2) and valid.shape == (3, 2)
    np.testing.assert_array_equal(valid.ravel(), [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(ids.ravel(), [0, 1, 2, 3, 4, -1])
    np.testing.assert_array_equal(blocks.reshape(6, 2)[:5], gallery)


def _ties_matrix(rows, width, seed):
    """Scores in {0, ..., 5}: ties everywhere, also at every cut."""
    return np.random.default_rng(seed).integers(0, 6, size=(rows, width)).astype(np.float32)


def test_grouped_widths_and_set_sizes():
    # ~k sets of a power-of-two size; widths padded to whole tiles and sets.
    assert topk.grouped_width(20_000, 139) == 20_224  # 79 tiles of 256
    assert topk._set_size(20_224 // 16, 139) == 8  # 158 sets
    assert topk.grouped_width(100_000, 148) == 100_352  # 196 tiles of 512
    assert topk._set_size(100_352 // 16, 148) == 32  # 196 sets
    assert topk._set_size(100_096 // 16, 148) == 16  # 6256 groups: 16 divides, 32 does not
    assert topk._set_size(40, 30) == 1


@pytest.mark.parametrize(
    "group,lanes,k,extra",
    [(4, 2, 3, 0), (4, 4, 10, 40), (8, 2, 5, 300), (2, 8, 31, 0), (2, 4, 3, 64), (16, 16, 20, 400)],
)
def test_grouped_selection_without_stable_ties_returns_a_best_set(
    monkeypatch, group, lanes, k, extra
):
    # Without stable ties the positions among equal scores may differ from the
    # stable order, but the values are the k best, sorted, and each position
    # holds the value reported for it (no position twice among the finite
    # ones; `top_k_blocks` reports -inf slots as position -1). Set sizes
    # 1, 2 and 8 (`extra` widens the block); the last case is the default
    # layout (16 groups of 16 columns per tile).
    monkeypatch.setattr(topk, "GROUP", group)
    monkeypatch.setattr(topk, "LANES", lanes)
    monkeypatch.setattr(topk, "GROUPED_MIN_RATIO", 1)
    width = topk.grouped_width(group * k + extra, k)
    assert topk._grouped(width, k) and not topk._grouped(width + 1, k)
    scores = _ties_matrix(11, width, seed=group + k)
    scores[3, : width - k + 2] = -np.inf  # fewer than k finite scores
    scores[5, :] = -np.inf  # none
    scores[7] = np.arange(width)  # the best at the end, no ties
    values, positions = (np.asarray(a) for a in topk._block_top_k(scores, k, stable=False))
    expected = -np.sort(-scores, axis=1)[:, :k]
    np.testing.assert_array_equal(values, expected)
    np.testing.assert_array_equal(np.take_along_axis(scores, positions, axis=1), values)
    for row, row_values in zip(positions, values, strict=True):
        finite = row[np.isfinite(row_values)]
        assert len(set(finite.tolist())) == len(finite)
        assert ((finite >= 0) & (finite < width)).all()
    assert np.isfinite(values[3]).sum() == k - 2
    np.testing.assert_array_equal(positions[7], np.arange(width - 1, width - k - 1, -1))


def test_search_through_group_maxima_keeps_the_stable_order(monkeypatch):
    # `ExactIndex` promises ties to the lower row: with the grouped selection
    # made eligible for every block, `search` takes it (one more result, put
    # in the stable order) and gives the stable order, falling back to the
    # stable search only for the chunks with a tie across the k-th result.
    monkeypatch.setattr(topk, "GROUP", 4)
    monkeypatch.setattr(topk, "LANES", 2)
    monkeypatch.setattr(topk, "GROUPED_MIN_RATIO", 1)
    grouped_calls, stable_chunks = [], []
    grouped = topk._grouped_top_k
    monkeypatch.setattr(topk, "_grouped_top_k", lambda *a: grouped_calls.append(1) or grouped(*a))
    search_fn = topk._search_fn

    def counting_search_fn(distance, k, exclude_self, stable):
        fn = search_fn(distance, k, exclude_self, stable)
        return (lambda *a: stable_chunks.append(1) or fn(*a)) if stable else fn

    monkeypatch.setattr(topk, "_search_fn", counting_search_fn)
    topk._COMPILED.clear()  # traced anew with the small groups
    rng = np.random.default_rng(11)
    distance = tfmetric.distances.get("euclidean")
    # Integer coordinates: ties everywhere (fallbacks); normal ones: none.
    for data, ties in [(lambda size: rng.integers(-2, 3, size=size), True),
                       (lambda size: rng.normal(size=size), False)]:  # fmt: skip
        queries = data((10, 3)).astype(np.float32)
        gallery = data((96, 3)).astype(np.float32)
        for block, k in [(96, 6), (48, 5)]:
            assert topk._grouped(block, k + 1)
            stable_chunks.clear()
            positions, values = topk.search(queries, gallery, distance, k, 4, block)
            expected_positions, expected_values, _ = _reference(queries, gallery, k)
            np.testing.assert_array_equal(positions, expected_positions)
            np.testing.assert_allclose(values, expected_values, rtol=1e-5, atol=1e-6)  # float32
            assert bool(stable_chunks) == ties  # the stable search only for ties at the cut
            assert len(stable_chunks) <= 3  # at most once per chunk of 4 queries
    assert len(grouped_calls) >= 2  # both block widths traced through the grouped selection
    topk._COMPILED.clear()


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_stable_order_sorts_ties_by_position_and_flags_ties_at_the_cut(dtype):
    # Positions come back from the compiled search as int32: `-1` (no item) must sort after every
    # position of the same key in that dtype too.
    inf = np.inf
    scores = np.array(
        [[1.0, 3.0, 3.0, 2.0], [5.0, 4.0, 4.0, 4.0], [2.0, -inf, -inf, 1.0], [2.0, 2.0, 2.0, 1.0]]
    )
    positions = np.array([[7, 9, 2, 4], [0, 8, 3, 5], [6, -1, -1, 1], [-1, 8, 3, 5]], dtype)
    keys, kept, tied = topk._stable_order(scores, positions, 3)
    np.testing.assert_array_equal(kept, [[2, 9, 4], [0, 3, 5], [6, 1, -1], [3, 8, -1]])
    np.testing.assert_array_equal(keys, [[3, 3, 2], [5, 4, 4], [2, 1, -inf], [2, 2, 2]])
    np.testing.assert_array_equal(tied, [False, True, False, False])


@pytest.mark.parametrize(
    "size,block,rows",
    [(1, 16384, 256), (300, 16384, 512), (16384, 16384, 16384), (20_000, 16384, 10_240),
     (100_000, 16384, 14_336), (33_000, 16384, 11_264), (50, 8, 8), (20, 1000, 256)],
)  # fmt: skip
def test_block_rows_pad_little_and_never_exceed_the_block_size(size, block, rows):
    got = topk.block_rows(size, block)
    assert got == rows
    assert got <= block
    assert -(-size // got) == -(-size // block)  # no more blocks than blocks of `block` rows


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_jax_query_chunk_keeps_the_temporaries_within_budget(backend, monkeypatch):
    # Under JAX on CPU a call's temporaries (~4.6 bytes per query and gallery
    # column) are allocated anew per call: the chunk keeps them within the
    # budget where that leaves >= 48 queries; TensorFlow keeps its chunk.
    pytest.importorskip("jax")
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    chunk = topk.jax_query_chunk(1024, 20_480)  # a call scoring 20,480 columns
    if backend == "jax":
        assert chunk == 328 and chunk % 8 == 0
        assert topk.JAX_TEMP_BYTES * chunk * 20_480 <= topk.JAX_TEMP_BUDGET
        assert topk.jax_query_chunk(100, 20_480) == 100  # never larger than asked
    else:
        assert chunk == 1024
    assert topk.jax_query_chunk(1024, 1_000_000) == 1024  # fewer than 48 queries would fit


@pytest.mark.parametrize("name", ["euclidean", "squared_euclidean", "inner_product"])
def test_queries_far_larger_than_the_gallery_get_their_joint_scale(name):
    # The gallery's keys are prepared once with its own power-of-two scale;
    # queries 2^70 times larger would overflow float32 there (||q||² ~ 1e42),
    # so they are searched on a gallery prepared with their joint scale
    # (squared distances: 2^50, whose squares still fit float32).
    from tfmetric._src import search_keys

    rng = np.random.default_rng(4)
    distance = tfmetric.distances.get(name)
    gallery = rng.normal(size=(50, 4)).astype(np.float32)
    magnitude = 2.0**50 if name == "squared_euclidean" else 2.0**70
    queries = (rng.normal(size=(6, 4)) * magnitude).astype(np.float32)
    prepared = topk.SearchGallery(gallery, distance, 64)
    assert prepared.for_queries(gallery * 1000) is prepared
    joint = prepared.for_queries(queries)
    assert joint is not prepared and joint.factor == search_keys.scale(distance, queries, gallery)
    positions, values = topk.search_gallery(queries, prepared, 3)
    assert np.isfinite(values).all() and (positions >= 0).all()
    q, g = queries.astype(np.float64), gallery[positions].astype(np.float64)
    if name == "inner_product":
        expected = np.einsum("id,ikd->ik", q, g)
    else:
        expected = np.sum((q[:, None, :] - g) ** 2, axis=2)
        expected = np.sqrt(expected) if name == "euclidean" else expected
    np.testing.assert_allclose(values, expected, rtol=1e-4)


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX's compiled temporaries: run by the JAX pass"
)
@pytest.mark.parametrize("num_blocks,rows", [(2, 10_240), (3, 10_240), (7, 14_336)])
def test_search_over_several_blocks_keeps_its_temporaries_reusable(num_blocks, rows):
    # `search_gallery` scans several blocks in a loop and sizes its query
    # chunk with `jax_query_chunk` over all their columns: XLA's temporaries
    # stay within glibc's largest mmap threshold (32 MiB), so their memory is
    # reused from call to call (unrolled, 7 blocks would hold every block's
    # scores).
    import jax

    distance = tfmetric.distances.get("euclidean")
    chunk = topk.jax_query_chunk(1024, num_blocks * rows)
    shapes = [(chunk, 128), (chunk,), (num_blocks, rows, 128), (num_blocks, rows)]
    dtypes = [np.float32, np.int32, np.float32, np.float32]
    args = [jax.ShapeDtypeStruct(s, t) for s, t in zip(shapes, dtypes, strict=True)]
    search = topk._search_fn(distance, 11, False, stable=False)
    temp = search.lower(*args).compile().memory_analysis().temp_size_in_bytes
    assert 4 * chunk * rows <= temp <= 32 << 20
