"""The MAP@R family of retrieval metrics from an exact top-k search with k = max R.

Precision@1, recall@k, R-precision, MAP@R and the reciprocal rank depend only
on the relevant references ranked within the first `R` (and on the rank of the
first relevant one), so a k-nearest-neighbour search with `k = max R` (plus
`TIE_SLOTS` sentinels) gives them exactly, as pytorch-metric-learning's `AccuracyCalculator`
does with faiss. The ranks are the same as `tfmetric.metrics._ranking`'s
(pessimistic ties: a non-relevant reference at the same distance as a relevant
one ranks before it):

- within the top `K`, the rank of the `j`-th relevant reference is `j` plus the
  number of non-relevant references of the top `K` at a distance `<=` its own;
- the `K + 1`-th neighbour is a sentinel: when it is strictly farther than the
  `K`-th, no reference outside the top `K` ties with the top `K`, so those ranks
  are complete; otherwise (an exact tie across the boundary) the non-relevant
  references at the boundary distance outside the top `K` are counted among
  the sentinels when the tie ends there, else in a second pass;
- the rank of the first relevant reference is read from the top `K` when one is
  there, else counted in the second pass (`1 + #{non-relevant <= its distance}`).

Per chunk of queries, one compiled call (XLA through the Keras backend:
`tf.function(jit_compile=True)` or `jax.jit`; static shapes) runs the search
of `tfmetric._src.topk` (gallery in blocks, running top-`K + TIE_SLOTS` merge: memory
O(chunk × block) whatever the gallery size) on search keys that order pairs
as the distance does but cost less (`tfmetric._src.search_keys`), through the exact selection
over group maxima of `topk._grouped_top_k` on wide blocks. Nothing is masked
per pair: the padding of the last gallery block gets `-inf` keys through its
gallery term and, leave-one-out, the search fetches one more neighbour and
the query's own position is dropped from it in numpy (`_drop_own`). The
ranks within the top `K` are computed in numpy (O(chunk × K); in XLA they doubled the
compilation time, 0.76 vs 0.33 CPU-s). The second pass over the gallery is
a separate compiled function, called (and compiled) only for a chunk with a
query that needs it.
"""

import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import cache, centring, chunks, search_keys, topk
from tfmetric._src import compile as backend_compile
from tfmetric.metrics import _ranking

# Beyond this many relevant references for one query, the top-k search stops
# paying off (XLA's `TopK` costs grow with K): the counting
# path of `_ranking` is used instead.
MAX_K = 1024
MAX_QUERY_CHUNK = 1024
MIN_QUERY_CHUNK = 256
# References fetched beyond the top K: a tie across the top-K boundary that
# ends among them is resolved without a second pass over the gallery (with
# one sentinel, 7 of 391 chunks of the 100k benchmark needed that pass).
TIE_SLOTS = 8
# Largest number of elements of one (chunk, gallery block) matrix: 2**25 float32
# = 128 MiB. Wide blocks are faster (one block up to a 131,072-item gallery).
ELEMENT_BUDGET = 1 << 25

_COMPILED = cache.FunctionCache()


def _own_position(q_self, block_size, i):
    """`(chunk, block)` mask of each query's own position in gallery block `i`."""
    position = i * block_size + ops.arange(block_size, dtype="int32")
    return ops.equal(position[None, :], q_self[:, None])


def _compiled_search(distance, k):
    return _COMPILED.get(("search", distance, k), lambda: _build_search(distance, k))


def _build_search(distance, k):
    """Top-`k` search of a chunk of queries: `(keys, positions)`, best first.

    No mask: the padding of the last block has `-inf` keys (`search_keys.key_fn`) and a
    query's own position (leave-one-out) is dropped afterwards
    (`_drop_own`), which saves a select per (query, reference) pair.
    """
    key_fn = search_keys.key_fn(distance)

    def search(q, blocks, block_terms):
        def score_fn(queries, block, i):
            return key_fn(queries, block, block_terms[i])

        return topk.top_k_blocks(q, blocks, score_fn, k, stable=False)

    return backend_compile.backend_jit(search, fused_elementwise=True)


def _drop_own(top_keys, top_pos, own):
    """Removes each query's own position from its top list, else the last slot (one slot less)."""
    n, width = top_pos.shape
    is_own = top_pos == own[:, None]
    drop = np.where(is_own.any(axis=1), is_own.argmax(axis=1), width - 1)
    keep = np.arange(width)[None, :] != drop[:, None]
    return top_keys[keep].reshape(n, width - 1), top_pos[keep].reshape(n, width - 1)


def _ranks_within(top_d, top_ids, q_id, k):
    """Ranks within the top `K` from the sorted top `K + TIE_SLOTS` (numpy; see the module docstring).

    Args:
        top_d: `(n, K + TIE_SLOTS)` dissimilarity keys, ascending (`inf` past
            the last reference).
        top_ids: `(n, K + TIE_SLOTS)` label ids of those references.
        q_id: `(n,)` label ids of the queries (`-1`: absent label).
        k: `K`.

    Returns:
        `(rank, rel, at_boundary, boundary, unresolved, counted)`: `(n, K)`
        ranks and relevance of the top `K` and where a slot is at the
        boundary (the `K`-th key, `(n,)`); `unresolved`: where a tie across
        the boundary goes on past the sentinels, so that the ranks at the
        boundary lack the non-relevant references there beyond the
        sentinels (a second pass counts them: `#{non-relevant <= boundary}`
        less `counted`, the non-relevant ones counted here).
    """
    finite = np.isfinite(top_d)
    rel = (top_ids == q_id[:, None]) & finite
    nonrel = finite & ~rel
    d_k, rel_k = top_d[:, :k], rel[:, :k]
    boundary = d_k[:, -1]
    # Non-relevant references of the top K at a distance <= each slot's: the
    # running count at the last slot of its run of equal distances (sorted).
    slots = np.arange(k)
    run_end = np.append(d_k[:, 1:] != d_k[:, :-1], np.ones((len(d_k), 1), bool), axis=1)
    last = np.minimum.accumulate(np.where(run_end, slots, k)[:, ::-1], axis=1)[:, ::-1]
    nonrel_before = np.take_along_axis(np.cumsum(nonrel[:, :k], axis=1), last, axis=1)
    # ... and those among the sentinels at the boundary distance.
    tied = np.sum((top_d[:, k:] == boundary[:, None]) & nonrel[:, k:], axis=1)
    at_boundary = d_k == boundary[:, None]
    nonrel_before += np.where(at_boundary, tied[:, None], 0)
    rank = np.cumsum(rel_k, axis=1) + nonrel_before
    unresolved = (top_d[:, -1] == boundary) & finite[:, -1]
    counted = np.sum(nonrel[:, :k], axis=1) + tied
    return rank, rel_k, at_boundary, boundary, unresolved, counted


def _compiled_count(distance):
    return _COMPILED.get(("count", distance), lambda: _build_count(distance))


def _build_count(distance):
    """The second pass: non-relevant references up to the first relevant one and the boundary."""
    inf = np.float32(np.inf)

    key_fn = search_keys.key_fn(distance)

    def count(q, q_id, q_self, boundary, blocks, block_terms, block_ids, valid):
        num_blocks, block_size = blocks.shape[0], blocks.shape[1]
        chunk = q.shape[0]

        def block_pass(body, init):
            start = ops.convert_to_tensor(0, "int32")
            return ops.while_loop(lambda i, *_: i < num_blocks, body, (start,) + init)[1:]

        def block_distances(i):
            d = -key_fn(q, blocks[i], block_terms[i])
            excluded = ops.logical_or(
                ops.logical_not(valid[i])[None, :], _own_position(q_self, block_size, i)
            )
            return ops.where(excluded, inf, d), excluded

        def first_body(i, p1):
            d, excluded = block_distances(i)
            same = ops.logical_and(ops.equal(block_ids[i][None, :], q_id[:, None]), ~excluded)
            return i + 1, ops.minimum(p1, ops.min(ops.where(same, d, inf), axis=1))

        (p1,) = block_pass(first_body, (ops.full((chunk,), inf, "float32"),))

        def count_body(i, below_first, below_boundary):
            d, excluded = block_distances(i)
            other = ops.logical_and(ops.not_equal(block_ids[i][None, :], q_id[:, None]), ~excluded)
            # `x = x + ...`, not `+=`: in-place under PyTorch, where both start as one tensor.
            below_first = below_first + ops.sum(
                ops.cast(ops.logical_and(other, d <= p1[:, None]), "int32"), axis=1
            )
            below_boundary = below_boundary + ops.sum(
                ops.cast(ops.logical_and(other, d <= boundary[:, None]), "int32"), axis=1
            )
            return i + 1, below_first, below_boundary

        zeros = ops.zeros((chunk,), "int32")
        return tuple(block_pass(count_body, (zeros, zeros)))

    return backend_compile.backend_jit(count, fused_elementwise=True)


def _sizes(num_queries, gallery_size, width):
    """(query chunk, gallery block) for the best `width` of each query, within `ELEMENT_BUDGET`.

    The query chunk stays large (the distance block is a real matrix product,
    not a memory-bound matrix-vector one) and the gallery is cut into as few
    blocks of equal size as the budget allows; a block wide enough for the
    selection through group maxima is padded to a multiple of its tiles.
    Under JAX on CPU the chunk is also kept to `topk.jax_query_chunk`.
    """
    total = max(gallery_size, width)
    # Larger chunks while the whole gallery still fits one block (fewer calls;
    # 20k: 1.40-1.48 s with 256 queries per chunk, 1.30 with 1024), down to
    # `MIN_QUERY_CHUNK` (smaller ones slow the matrix product: 100k, 128
    # queries: 24.8 s against 23.5 with 256).
    chunk = MAX_QUERY_CHUNK
    while chunk > MIN_QUERY_CHUNK and chunk * total > ELEMENT_BUDGET:
        chunk //= 2
    chunk = topk.jax_query_chunk(chunk, total)
    if num_queries > chunk:
        # Chunks of equal size (multiples of 8): no padded queries in the last one.
        chunk = -(-num_queries // -(-num_queries // chunk))
        chunk = -(-chunk // 8) * 8
    else:
        chunk = min(chunk, max(1, 1 << (max(1, num_queries) - 1).bit_length()))
    max_block = max(width, ELEMENT_BUDGET // chunk)
    num_blocks = -(-total // max_block)
    block = -(-total // num_blocks)
    padded = topk.grouped_width(block, width)
    if topk._grouped(padded, width):
        block = padded
    return chunk, max(width, block)


def max_relevant(query_labels, gallery_labels):
    """The largest number of references sharing a query's label (the `K` of the search)."""
    classes, counts = np.unique(gallery_labels, return_counts=True)
    where = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    found = classes[where] == query_labels
    return int(max(1, counts[where][found].max(initial=1)))


def nearest_ranks(
    query,
    query_labels,
    gallery=None,
    gallery_labels=None,
    distance="euclidean",
    first_rank_up_to=None,
):
    """`_ranking.Ranks` without `ap_sum` (NaN), from a top-k search with k = max R.

    Same arguments and conventions as `_ranking.relevant_ranks`, plus
    `first_rank_up_to`: `None` makes `first_rank` exact for every query; an
    integer `m` makes it exact only where it is at most `max(m, K)`, the rank
    of a first relevant reference beyond the top `K` being reported as `K + 1`
    (enough for precision@1 and recall@k with k <= m: no second pass over the
    gallery, nor its compilation, for queries without a relevant reference in
    their top `K`).
    """
    distance = distances_lib.get(distance)
    query, query_labels, gallery, gallery_labels = _ranking.prepare_retrieval_inputs(
        query, query_labels, gallery, gallery_labels
    )
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = query, query_labels
    classes, counts = np.unique(gallery_labels, return_counts=True)
    g_id = np.searchsorted(classes, gallery_labels).astype(np.int32)
    where = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    found = classes[where] == query_labels
    q_id = np.where(found, where, -1).astype(np.int32)
    num_relevant = np.where(found, counts[where], 0).astype(np.int64)
    if leave_one_out:
        q_self = np.arange(len(query), dtype=np.int32)
        num_relevant = np.maximum(num_relevant - 1, 0)
    else:
        q_self = np.full(len(query), -1, np.int32)
    k = int(max(1, num_relevant.max()))
    # The top K, `TIE_SLOTS` sentinels and, leave-one-out, the query itself.
    width = k + TIE_SLOTS + int(leave_one_out)
    chunk, block = _sizes(len(query), len(gallery), width)
    # Euclidean keys on embeddings centred on the gallery's mean (`centring`).
    shift = centring.offset(distance, gallery)
    query = centring.centred(query, shift)
    gallery = query if leave_one_out else centring.centred(gallery, shift)
    factor = search_keys.scale(distance, query, gallery)
    query, gallery = (search_keys.operands(distance, a, factor) for a in (query, gallery))
    term = search_keys.gallery_term(distance, gallery)
    blocks, valid, block_terms, block_ids = topk.gallery_blocks(gallery, block, term, g_id)
    block_terms = np.where(valid, block_terms, np.float32(np.inf))
    blocks, valid, block_terms, block_ids = (
        backend_compile.tensor(a) for a in (blocks, valid, block_terms, block_ids)
    )
    search = _compiled_search(distance, width)
    exact_first = first_rank_up_to is None or first_rank_up_to > k

    def work(begin, stop):
        def padded(a, fill=0):
            return _ranking.padded_chunk(a, begin, stop, chunk, fill)

        n = stop - begin
        inputs = (padded(query), padded(q_id, -1), padded(q_self, -1))
        top_keys, top_pos = (
            backend_compile.numpy(value)[:n] for value in search(inputs[0], blocks, block_terms)
        )
        if leave_one_out:
            top_keys, top_pos = _drop_own(top_keys, top_pos, q_self[begin:stop])
        top_ids = np.where(top_pos >= 0, g_id[np.maximum(top_pos, 0)], -1)
        rank, rel, at_boundary, boundary, unresolved, counted = _ranks_within(
            -top_keys, top_ids, q_id[begin:stop], k
        )
        r = num_relevant[begin:stop]
        rank = rank.astype(np.int64)
        any_rel = rel.any(axis=1)
        missing = (r > 0) & ~any_rel
        below_first = np.full(n, k, np.int64)  # "beyond the top K" unless counted
        if unresolved.any() or (exact_first and missing.any()):
            below_first, below_boundary = (
                backend_compile.numpy(value)[:n]
                for value in _compiled_count(distance)(
                    *inputs,
                    _ranking.padded_chunk(boundary, 0, n, chunk),
                    blocks,
                    block_terms,
                    block_ids,
                    valid,
                )
            )
            outside = np.where(unresolved, below_boundary - counted, 0)
            rank += np.where(at_boundary, outside[:, None], 0)
        big = np.iinfo(np.int64).max
        first = np.where(any_rel, np.where(rel, rank, big).min(axis=1), 1 + below_first)
        within = rel & (rank <= r[:, None])
        j = np.cumsum(rel, axis=1)
        return (
            np.where(r > 0, first, 0),
            within.sum(axis=1),
            np.where(within, j / np.maximum(rank, 1.0), 0.0).sum(axis=1),
        )

    per_chunk = chunks.map_chunks(work, len(query), chunk)
    columns = zip(*per_chunk, strict=True)
    first_rank, r_hits, map_at_r_sum = (
        np.concatenate(parts).astype(dtype)
        for parts, dtype in zip(columns, (np.int64, np.int64, np.float64), strict=True)
    )
    return _ranking.Ranks(
        num_relevant,
        first_rank,
        r_hits,
        map_at_r_sum,
        np.full(len(query), np.nan),
    )


def ranks(
    query,
    query_labels,
    gallery,
    gallery_labels,
    distance,
    first_rank_up_to=None,
    whole_ranking=False,
):
    """`nearest_ranks`, or `_ranking.relevant_ranks` for the whole ranking (mAP) or a huge R.

    Same arguments as `nearest_ranks`; `whole_ranking` asks for `ap_sum`,
    which only the counting path over every reference gives.
    """
    references = query_labels if gallery is None else gallery_labels
    if not whole_ranking and max_relevant(query_labels, references) <= MAX_K:
        return nearest_ranks(
            query, query_labels, gallery, gallery_labels, distance, first_rank_up_to
        )
    return _ranking.relevant_ranks(query, query_labels, gallery, gallery_labels, distance)
