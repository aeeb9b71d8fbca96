"""The MAP@R family of retrieval metrics from an exact top-k search with k = max R.

Precision@1, recall@k, R-precision, MAP@R and the reciprocal rank depend only
on the relevant references ranked within the first `R` (and on the rank of the
first relevant one), so a k-nearest-neighbour search with `k = max R` (plus one
sentinel) gives them exactly, as pytorch-metric-learning's `AccuracyCalculator`
does with faiss. The ranks are the same as `tfmetric.metrics._ranking`'s
(pessimistic ties: a non-relevant reference at the same distance as a relevant
one ranks before it):

- within the top `K`, the rank of the `j`-th relevant reference is `j` plus the
  number of non-relevant references of the top `K` at a distance `<=` its own;
- the `K + 1`-th neighbour is a sentinel: when it is strictly farther than the
  `K`-th, no reference outside the top `K` ties with the top `K`, so those ranks
  are complete; otherwise (an exact tie across the boundary) the non-relevant
  references at the boundary distance are counted in a second pass;
- the rank of the first relevant reference is read from the top `K` when one is
  there, else counted in the second pass (`1 + #{non-relevant <= its distance}`).

The second pass over the gallery runs (under `ops.cond`) only for a chunk of
queries that needs it. Per chunk of queries (XLA-compiled by the Keras backend:
`tf.function(jit_compile=True)` or `jax.jit`; static shapes) the
gallery is scanned in blocks with a running top-`K+1` merge, so memory is
O(chunk × block) whatever the gallery size.
"""

import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import cache
from tfmetric._src import compile as backend_compile
from tfmetric.metrics import _ranking

# Beyond this many relevant references for one query, the top-k search stops
# paying off (a (chunk, K, K) comparison and a large top-k): the counting
# path of `_ranking` is used instead.
MAX_K = 1024
MAX_QUERY_CHUNK = 256

_COMPILED = cache.FunctionCache()


def _compiled_fn(distance, k):
    return _COMPILED.get((distance, k), lambda: _build_fn(distance, k))


def _build_fn(distance, k):
    inf = np.float32(np.inf)

    def block_distances(q, q_self, block, valid_block, i):
        block_size = block.shape[0]
        d = distance.dissimilarity(q, block)
        position = i * block_size + ops.arange(block_size, dtype="int32")
        excluded = ops.logical_or(
            ops.logical_not(valid_block)[None, :], ops.equal(position[None, :], q_self[:, None])
        )
        return ops.where(excluded, inf, d), excluded

    def chunk_fn(q, q_id, q_self, blocks, block_ids, valid):
        num_blocks, block_size = blocks.shape[0], blocks.shape[1]
        chunk = q.shape[0]
        k1 = k + 1
        flat_ids = ops.reshape(block_ids, [-1])

        def scan(i, best, best_pos, p1):
            block, ids, ok = blocks[i], block_ids[i], valid[i]
            d, excluded = block_distances(q, q_self, block, ok, i)
            same = ops.logical_and(ops.equal(ids[None, :], q_id[:, None]), ~excluded)
            p1 = ops.minimum(p1, ops.min(ops.where(same, d, inf), axis=1))
            neg, pos = ops.top_k(-d, k1)
            merged = ops.concatenate([best, neg], axis=1)
            merged_pos = ops.concatenate(
                [best_pos, ops.cast(pos, "int32") + i * block_size], axis=1
            )
            best, chosen = ops.top_k(merged, k1)
            return i + 1, best, ops.take_along_axis(merged_pos, chosen, axis=1), p1

        _, neg_top, top_pos, p1 = ops.while_loop(
            lambda i, *_: i < num_blocks,
            scan,
            (
                ops.convert_to_tensor(0, "int32"),
                ops.full((chunk, k1), -inf, "float32"),
                ops.zeros((chunk, k1), "int32"),
                ops.full((chunk,), inf, "float32"),
            ),
        )
        top_d = -neg_top  # ascending
        finite = ops.isfinite(top_d)
        rel = ops.logical_and(ops.equal(ops.take(flat_ids, top_pos), q_id[:, None]), finite)
        d_k, rel_k, finite_k = top_d[:, :k], rel[:, :k], finite[:, :k]
        nonrel_k = ops.logical_and(finite_k, ~rel_k)
        boundary = d_k[:, -1]
        tie_across = ops.logical_and(ops.equal(boundary, top_d[:, k]), finite[:, k])
        any_rel = ops.any(rel_k, axis=1)
        has_relevant = ops.isfinite(p1)
        need = ops.any(ops.logical_or(tie_across, ops.logical_and(has_relevant, ~any_rel)))

        def count_pass():
            def body(i, below_first, below_boundary):
                d, excluded = block_distances(q, q_self, blocks[i], valid[i], i)
                other = ops.logical_and(
                    ops.not_equal(block_ids[i][None, :], q_id[:, None]), ~excluded
                )
                below_first += ops.sum(
                    ops.cast(ops.logical_and(other, d <= p1[:, None]), "int32"), axis=1
                )
                below_boundary += ops.sum(
                    ops.cast(ops.logical_and(other, d <= boundary[:, None]), "int32"), axis=1
                )
                return i + 1, below_first, below_boundary

            zeros = ops.zeros((chunk,), "int32")
            _, below_first, below_boundary = ops.while_loop(
                lambda i, *_: i < num_blocks,
                body,
                (ops.convert_to_tensor(0, "int32"), zeros, zeros),
            )
            return below_first, below_boundary

        def no_pass():
            zeros = ops.zeros((chunk,), "int32")
            return zeros, zeros

        below_first, below_boundary = ops.cond(need, count_pass, no_pass)
        # Non-relevant references of the top K at a distance <= each slot's.
        le = d_k[:, None, :] <= d_k[:, :, None]
        nonrel_before = ops.sum(
            ops.cast(ops.logical_and(le, nonrel_k[:, None, :]), "int32"), axis=2
        )
        nonrel_at_boundary = ops.sum(
            ops.cast(ops.logical_and(nonrel_k, d_k <= boundary[:, None]), "int32"), axis=1
        )
        outside = ops.where(tie_across, below_boundary - nonrel_at_boundary, 0)
        extra = ops.where(ops.equal(d_k, boundary[:, None]), outside[:, None], 0)
        j = ops.cumsum(ops.cast(rel_k, "int32"), axis=1)
        rank = j + nonrel_before + extra
        big = np.int32(np.iinfo(np.int32).max)
        first_in_top = ops.min(ops.where(rel_k, rank, big), axis=1)
        first_rank = ops.where(any_rel, first_in_top, 1 + below_first)
        first_rank = ops.where(has_relevant, first_rank, 0)
        return first_rank, rank, rel_k

    return backend_compile.backend_jit(chunk_fn)


def _blocks(gallery, gallery_ids, block_size):
    """`(blocks, block_size, d)` gallery, its ids and a validity mask (the tail padded)."""
    n, dim = gallery.shape
    num_blocks = -(-n // block_size)
    pad = num_blocks * block_size - n
    valid = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
    gallery = np.concatenate([gallery, np.zeros((pad, dim), gallery.dtype)])
    ids = np.concatenate([gallery_ids, np.full(pad, -2, np.int32)])
    return (
        gallery.reshape(num_blocks, block_size, dim),
        ids.reshape(num_blocks, block_size),
        valid.reshape(num_blocks, block_size),
    )


def _sizes(num_queries, gallery_size, k):
    """(query chunk, gallery block): chunk × block within `_ranking.ELEMENT_BUDGET`.

    The query chunk stays large (the distance block is a real matrix product,
    not a memory-bound matrix-vector one) and the gallery is cut into as few
    blocks of equal size as the budget allows.
    """
    chunk = max(1, min(MAX_QUERY_CHUNK, 1 << (max(1, num_queries) - 1).bit_length()))
    total = max(gallery_size, k + 1)
    max_block = max(k + 1, _ranking.ELEMENT_BUDGET // chunk)
    num_blocks = -(-total // max_block)
    block = -(-total // num_blocks)
    return chunk, max(k + 1, -(-block // 8) * 8)


def max_relevant(query_labels, gallery_labels):
    """The largest number of references sharing a query's label (the `K` of the search)."""
    classes, counts = np.unique(gallery_labels, return_counts=True)
    where = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    found = classes[where] == query_labels
    return int(max(1, counts[where][found].max(initial=1)))


def nearest_ranks(query, query_labels, gallery=None, gallery_labels=None, distance="euclidean"):
    """`_ranking.Ranks` without `ap_sum` (NaN), from a top-k search with k = max R.

    Same arguments and conventions as `_ranking.relevant_ranks`.
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
    chunk, block = _sizes(len(query), len(gallery), k)
    blocks, block_ids, valid = (backend_compile.tensor(a) for a in _blocks(gallery, g_id, block))
    chunk_fn = _compiled_fn(distance, k)
    first_rank = np.zeros(len(query), np.int64)
    r_hits = np.zeros(len(query), np.int64)
    map_at_r_sum = np.zeros(len(query), np.float64)
    for begin in range(0, len(query), chunk):
        stop = min(begin + chunk, len(query))

        def padded(a, fill=0, begin=begin, stop=stop):
            return _ranking.padded_chunk(a, begin, stop, chunk, fill)

        first, rank, rel = chunk_fn(
            padded(query), padded(q_id, -1), padded(q_self, -1), blocks, block_ids, valid
        )
        n = stop - begin
        rank = backend_compile.numpy(rank)[:n].astype(np.float64)
        rel = backend_compile.numpy(rel)[:n]
        r = num_relevant[begin:stop, None]
        within = rel & (rank <= r)
        j = np.cumsum(rel, axis=1)
        first_rank[begin:stop] = backend_compile.numpy(first)[:n]
        r_hits[begin:stop] = within.sum(axis=1)
        map_at_r_sum[begin:stop] = np.where(within, j / np.maximum(rank, 1.0), 0.0).sum(axis=1)
    return _ranking.Ranks(
        num_relevant,
        first_rank,
        r_hits,
        map_at_r_sum,
        np.full(len(query), np.nan),
    )
