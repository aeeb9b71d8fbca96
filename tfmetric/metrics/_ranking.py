"""Ranks of the relevant references of every query, computed in bounded memory.

Every retrieval metric of `tfmetric.metrics` is a function of the positions
("ranks") at which the relevant references of a query appear in its ranking of
the references. For query `q` with `R` relevant references (same label, `q`
itself excluded in leave-one-out mode) whose distances sorted ascending are
`p_1 <= ... <= p_R`, the rank of the `j`-th one is

    rank_j = j + #{non-relevant references r : d(q, r) <= p_j}

i.e. ties are broken *pessimistically*: a non-relevant reference at exactly the
same distance as a relevant one is ranked before it (ties among relevant
references do not change any metric). The result is a deterministic lower
bound of the metric that an arbitrary tie-break would give.

Computation, per chunk of queries (XLA-compiled, fixed chunk shape, last chunk
padded): the `(chunk, gallery)` distance block; the relevant references of a
query are a contiguous block once the gallery is sorted by label, so their
distances are gathered into a `(chunk, max R)` tensor and sorted; a binary
search of every non-relevant distance into that sorted row gives how many
relevant references are strictly closer, and a per-row histogram plus a
cumulative sum gives `#non-relevant <= p_j` for every `j`. Memory is
O(chunk × (gallery + max R)); the `(queries, gallery)` matrix is never built
and nothing is sorted but the relevant distances.
"""

import warnings
from typing import NamedTuple

import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import cache, inputs
from tfmetric._src import compile as backend_compile

# Largest number of elements of one (chunk, gallery) block; 2**23 float32 = 32 MiB.
ELEMENT_BUDGET = 1 << 23
MAX_QUERY_CHUNK = 1024

_COMPILED = cache.FunctionCache()


class Ranks(NamedTuple):
    """Per-query results of `relevant_ranks` (numpy arrays of shape `(queries,)`).

    Attributes:
        num_relevant: `R`, the number of relevant references (0: none).
        first_rank: Rank of the closest relevant reference (meaningless where R = 0).
        r_hits: Number of relevant references among the first `R` ranks.
        map_at_r_sum: Sum of `precision@rank_j` over the relevant references
            ranked within the first `R`.
        ap_sum: Sum of `precision@rank_j` over all relevant references.
    """

    num_relevant: np.ndarray
    first_rank: np.ndarray
    r_hits: np.ndarray
    map_at_r_sum: np.ndarray
    ap_sum: np.ndarray


def prepare_retrieval_inputs(query, query_labels, gallery, gallery_labels):
    """Validates inputs; returns `(query, query_labels, gallery, gallery_labels)`.

    `gallery` is `None` in leave-one-out mode.
    """
    query = inputs.check_embedding_array(query, "query")
    query_labels = inputs.check_label_array(query_labels, "query_labels", query.shape[0], "query")
    if gallery is None:
        if gallery_labels is not None:
            raise ValueError("`gallery_labels` was given without `gallery`.")
        return query, query_labels, None, None
    gallery = inputs.check_embedding_array(gallery, "gallery")
    if gallery_labels is None:
        raise ValueError("`gallery_labels` is required when `gallery` is given.")
    gallery_labels = inputs.check_label_array(
        gallery_labels, "gallery_labels", gallery.shape[0], "gallery"
    )
    inputs.check_same_dim(query, gallery, "query", "gallery")
    return query, query_labels, gallery, gallery_labels


def padded_chunk(array, begin, stop, size, fill=0):
    """`array[begin:stop]` padded with `fill` to `size` rows, as a tensor (static shapes)."""
    part = array[begin:stop]
    if len(part) < size:
        pad = np.full((size - len(part),) + part.shape[1:], fill, part.dtype)
        part = np.concatenate([part, pad])
    return backend_compile.tensor(part)


def _count_below(sorted_rows, values, width):
    """`searchsorted(sorted_rows, values, side="left")` as an unrolled binary search.

    XLA lowers `tf.searchsorted` to a broadcast comparison, O(chunk × gallery ×
    width) work and memory; this takes O(chunk × gallery × log(width)) with no
    temporary larger than `values`.
    """
    flat = ops.reshape(sorted_rows, [-1])
    base = (ops.arange(sorted_rows.shape[0], dtype="int32") * width)[:, None]
    count = ops.zeros(values.shape, "int32")
    step = 1 << (width.bit_length() - 1)
    while step:
        candidate = count + step
        probe = ops.take(flat, base + ops.minimum(candidate, width) - 1)
        count = ops.where(ops.logical_and(candidate <= width, probe < values), candidate, count)
        step //= 2
    return count


def _compiled_chunk_fn(distance, window):
    distance = distances_lib.get(distance)
    return _COMPILED.get((distance, window), lambda: _build_chunk_fn(distance, window))


def _build_chunk_fn(distance_fn, window):

    def chunk_fn(q, q_id, q_start, q_count, q_self, g, g_id):
        chunk = q.shape[0]
        gallery_size = g.shape[0]
        d = distance_fn.dissimilarity(q, g)
        inf = np.float32(np.inf)
        slots = ops.arange(window, dtype="int32")
        block = q_start[:, None] + slots[None, :]
        in_block = ops.logical_and(
            slots[None, :] < q_count[:, None], ops.not_equal(block, q_self[:, None])
        )
        relevant = ops.take_along_axis(d, ops.minimum(block, gallery_size - 1), axis=1)
        relevant = ops.sort(ops.where(in_block, relevant, inf), axis=1)
        same = ops.equal(g_id[None, :], q_id[:, None])
        others = ops.where(same, inf, d)
        # Number of relevant distances strictly below each non-relevant distance;
        # masked entries (+inf) land past the last real relevant slot.
        below = _count_below(relevant, others, window)
        segments = below + (window + 1) * ops.arange(chunk, dtype="int32")[:, None]
        hist = ops.segment_sum(
            ops.ones((chunk * gallery_size,), "int32"),
            ops.reshape(segments, [-1]),
            num_segments=chunk * (window + 1),
        )
        hist = ops.reshape(hist, (chunk, window + 1))
        others_before = ops.cast(ops.cumsum(hist, axis=1)[:, :window], "float32")
        position = ops.cast(slots + 1, "float32")[None, :]
        rank = position + others_before
        num_relevant = q_count - ops.cast(q_self >= 0, "int32")
        valid = slots[None, :] < num_relevant[:, None]
        precision = ops.where(valid, position / rank, 0.0)
        within_r = ops.logical_and(valid, rank <= ops.cast(num_relevant, "float32")[:, None])
        return (
            ops.cast(rank[:, 0], "int32"),
            ops.sum(ops.cast(within_r, "int32"), axis=1),
            ops.sum(ops.where(within_r, precision, 0.0), axis=1),
            ops.sum(precision, axis=1),
        )

    return backend_compile.backend_jit(chunk_fn)


def _chunk_size(num_queries, width):
    size = max(1, min(MAX_QUERY_CHUNK, ELEMENT_BUDGET // max(1, width)))
    size = 1 << (size.bit_length() - 1)  # a power of two: few distinct compiled shapes
    return max(1, min(size, 1 << (max(1, num_queries) - 1).bit_length()))


def relevant_ranks(query, query_labels, gallery=None, gallery_labels=None, distance="euclidean"):
    """Computes `Ranks` for every query (see the module docstring).

    With `gallery=None` every query is ranked against the other queries: the
    query itself is excluded (by position), duplicates of it are kept.
    """
    distance = distances_lib.get(distance)
    query, query_labels, gallery, gallery_labels = prepare_retrieval_inputs(
        query, query_labels, gallery, gallery_labels
    )
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = query, query_labels
    order = np.argsort(gallery_labels, kind="stable")
    sorted_gallery = gallery[order]
    classes, starts, counts = np.unique(
        gallery_labels[order], return_index=True, return_counts=True
    )
    g_id = np.searchsorted(classes, gallery_labels[order]).astype(np.int32)
    where = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    found = classes[where] == query_labels
    q_id = np.where(found, where, -1).astype(np.int32)
    q_start = np.where(found, starts[where], 0).astype(np.int32)
    q_count = np.where(found, counts[where], 0).astype(np.int32)
    if leave_one_out:
        q_self = np.empty(len(order), np.int32)
        q_self[order] = np.arange(len(order), dtype=np.int32)
    else:
        q_self = np.full(len(query), -1, np.int32)
    window = int(max(1, q_count.max()))
    chunk = _chunk_size(len(query), gallery.shape[0] + window)
    chunk_fn = _compiled_chunk_fn(distance, window)
    g = backend_compile.tensor(sorted_gallery)
    g_ids = backend_compile.tensor(g_id)
    per_query = ([], [], [], [])
    for begin in range(0, len(query), chunk):
        stop = min(begin + chunk, len(query))

        def padded(a, fill=0, begin=begin, stop=stop):
            return padded_chunk(a, begin, stop, chunk, fill)

        outputs = chunk_fn(
            padded(query),
            padded(q_id, -1),
            padded(q_start),
            padded(q_count),
            padded(q_self, -1),
            g,
            g_ids,
        )
        for store, value in zip(per_query, outputs, strict=True):
            store.append(backend_compile.numpy(value)[: stop - begin])
    first_rank, r_hits, map_at_r_sum, ap_sum = (np.concatenate(s) for s in per_query)
    num_relevant = q_count - (q_self >= 0)
    return Ranks(
        num_relevant.astype(np.int64),
        first_rank.astype(np.int64),
        r_hits.astype(np.int64),
        map_at_r_sum.astype(np.float64),
        ap_sum.astype(np.float64),
    )


def evaluated_queries(ranks):
    """Mask of the queries with R > 0; warns about the others, raises if none."""
    keep = ranks.num_relevant > 0
    if not np.any(keep):
        raise ValueError(
            "No query has a relevant reference (R = 0 for every query): no label of "
            "`query_labels` occurs among the references."
        )
    missing = int(np.sum(~keep))
    if missing:
        warnings.warn(
            f"{missing} of {len(keep)} queries have no relevant reference (R = 0) and are "
            "excluded from the retrieval metrics.",
            stacklevel=3,
        )
    return keep
