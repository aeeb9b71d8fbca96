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
padded; chunks run concurrently on the CPU cores, `tfmetric._src.chunks`):

1. the `(chunk, gallery)` distance block; the relevant references of a query
   are a contiguous block once the gallery is sorted by label, so their
   distances are gathered into a `(chunk, max R)` row and sorted (`p`);
2. for every other reference, `below = #{j : p_j < d}` — the number of
   relevant distances strictly smaller — by a grid lookup: a uniform grid of
   `CELLS_PER_RELEVANT * max R` cells over `[p_1, p_R]` per query, a table
   of where each cell's relevant distances start in `p`, then a binary search
   among the relevant distances of the reference's own cell only. The cell of
   a value is a monotone function of it, so relevant distances in lower cells
   are smaller and those in higher cells larger: the count is exact. The
   search takes `steps = bit_length(most relevant distances in one cell)`
   probes; a chunk with a fuller cell than the compiled `steps` allows is run
   again with more (the kernel reports its fullest cell);
3. a per-query histogram of `below` and its cumulative sum give
   `#non-relevant <= p_j` for every `j` (a separate compiled call: fused
   with step 2, XLA's scatter recomputes step 2 inside a serial loop).

Memory is O(chunk × (gallery + cells)); the `(queries, gallery)` matrix is
never built and nothing is sorted but the relevant distances. Work per
(query, reference) pair: the distance, one table lookup, `steps` probes and
one histogram increment — against `log2(max R)` probes for a plain binary
search.
"""

import warnings
from typing import NamedTuple

import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import cache, centring, chunks, inputs
from tfmetric._src import compile as backend_compile

# Largest number of elements of one (chunk, gallery) block; 2**24 float32 = 64 MiB
# (a few such blocks per chunk in flight: distances, counts).
ELEMENT_BUDGET = 1 << 24
MAX_QUERY_CHUNK = 1024
# Grid cells per relevant reference (step 2 of the module docstring), and the
# most cells of one chunk's table (chunk × cells int32).
CELLS_PER_RELEVANT = 16
CELL_BUDGET = 1 << 21
# Probes compiled first; a chunk with a fuller cell is run again with more.
INITIAL_STEPS = 2
# Under JAX on CPU, XLA's runtime allocates a call's outputs and temporaries anew on
# every call (glibc maps those above 32 MiB freshly: page faults on first touch)
# and the distance and count matrices pass between the three calls: smaller
# chunks keep them in the cache (20k x 20k, all metrics: 6.9 s with chunks of
# 512 queries, 3.8 s with 64; 100k: 5.4 against 5.1 s per 3,000 queries with 32).
JAX_ELEMENT_BUDGET = 1 << 21
JAX_MIN_QUERY_CHUNK = 32

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


def _compiled_kernels(distance, window, cells, steps):
    distance = distances_lib.get(distance)
    key = (distance, window, cells, steps)
    return _COMPILED.get(key, lambda: _build_kernels(distance, window, cells, steps))


def _build_kernels(distance_fn, window, cells, steps):
    """`(grid_fn, below_fn, score_fn)`: steps 1, 2 and 3 of the module docstring.

    Three compiled calls, each one's outputs materialised: fused into one
    program, XLA recomputes the grid's cumulative sums for every reference
    (in the lookup's loop) and the search inside the histogram's serial
    scatter, several times the work.
    """
    inf = np.float32(np.inf)

    def relevant_rows(q_count, q_self):
        slots = ops.arange(window, dtype="int32")
        num_relevant = q_count - ops.cast(q_self >= 0, "int32")
        return slots, num_relevant, slots[None, :] < num_relevant[:, None]

    def cell_of(x, lo, scale):
        # Monotone in x (a subtraction, a positive scale, clip, floor).
        offset = (x - lo) * scale
        return ops.cast(ops.floor(ops.clip(offset, 0.0, cells - 1.0)), "int32")

    def grid_fn(q, q_start, q_count, q_self, g):
        chunk, gallery_size = q.shape[0], g.shape[0]
        d = distance_fn.dissimilarity(q, g)
        slots, num_relevant, valid = relevant_rows(q_count, q_self)
        block = q_start[:, None] + slots[None, :]
        in_block = ops.logical_and(
            slots[None, :] < q_count[:, None], ops.not_equal(block, q_self[:, None])
        )
        relevant = ops.take_along_axis(d, ops.minimum(block, gallery_size - 1), axis=1)
        relevant = ops.sort(ops.where(in_block, relevant, inf), axis=1)
        # The grid over [p_1, p_R] of each query. Without two distinct finite
        # relevant distances every finite value falls in the first cell (a tiny
        # positive scale: no `inf * 0`, so no NaN; +inf lands in the last).
        any_relevant = num_relevant[:, None] > 0
        last = ops.maximum(num_relevant - 1, 0)[:, None]
        lo = ops.where(any_relevant, relevant[:, :1], 0.0)
        hi = ops.where(any_relevant, ops.take_along_axis(relevant, last, axis=1), 0.0)
        span = hi - lo
        usable = ops.logical_and(ops.isfinite(span), span > 0)
        lo = ops.where(ops.isfinite(lo), lo, 0.0)
        scale = ops.where(usable, ops.minimum(cells / ops.where(usable, span, 1.0), 1e30), 1e-30)
        row = ops.arange(chunk, dtype="int32")[:, None]
        relevant_cell = ops.where(valid, cell_of(ops.where(valid, relevant, lo), lo, scale), cells)
        per_cell = ops.segment_sum(
            ops.ones((chunk * window,), "int32"),
            ops.reshape(relevant_cell + row * (cells + 1), [-1]),
            num_segments=chunk * (cells + 1),
        )
        per_cell = ops.reshape(per_cell, (chunk, cells + 1))[:, :cells]
        cell_start = ops.cumsum(per_cell, axis=1) - per_cell
        return d, relevant, lo, scale, cell_start, ops.max(per_cell)

    def below_fn(d, relevant, lo, scale, cell_start, q_id, g_id):
        chunk = d.shape[0]
        row = ops.arange(chunk, dtype="int32")[:, None]
        below = ops.take(ops.reshape(cell_start, [-1]), cell_of(d, lo, scale) + row * cells)
        flat = ops.reshape(relevant, [-1])
        extra = ops.zeros_like(below)
        step = (1 << (steps - 1)) if steps else 0
        while step:
            probe_at = below + extra + (step - 1)
            probe = ops.take(flat, ops.minimum(probe_at, window - 1) + row * window)
            closer = ops.logical_and(probe_at < window, probe < d)
            extra = ops.where(closer, extra + step, extra)
            step //= 2
        # Relevant references and the query itself go to the histogram's last
        # bin, which no rank reads.
        same = ops.equal(g_id[None, :], q_id[:, None])
        return ops.where(same, window, below + extra)

    def score_fn(below, q_count, q_self):
        chunk, gallery_size = below.shape
        slots, num_relevant, valid = relevant_rows(q_count, q_self)
        row = ops.arange(chunk, dtype="int32")[:, None]
        hist = ops.segment_sum(
            ops.ones((chunk * gallery_size,), "int32"),
            ops.reshape(below + (window + 1) * row, [-1]),
            num_segments=chunk * (window + 1),
        )
        hist = ops.reshape(hist, (chunk, window + 1))
        others_before = ops.cast(ops.cumsum(hist, axis=1)[:, :window], "float32")
        position = ops.cast(slots + 1, "float32")[None, :]
        rank = position + others_before
        precision = ops.where(valid, position / rank, 0.0)
        within_r = ops.logical_and(valid, rank <= ops.cast(num_relevant, "float32")[:, None])
        return (
            ops.cast(rank[:, 0], "int32"),
            ops.sum(ops.cast(within_r, "int32"), axis=1),
            ops.sum(ops.where(within_r, precision, 0.0), axis=1),
            ops.sum(precision, axis=1),
        )

    return tuple(backend_compile.backend_jit(fn) for fn in (grid_fn, below_fn, score_fn))


def _chunk_size(num_queries, width):
    def fitting(budget):
        size = max(1, min(MAX_QUERY_CHUNK, budget // max(1, width)))
        return 1 << (size.bit_length() - 1)  # a power of two: few distinct compiled shapes

    size = fitting(ELEMENT_BUDGET)
    if backend_compile.jax_on_cpu():
        size = min(size, max(fitting(JAX_ELEMENT_BUDGET), JAX_MIN_QUERY_CHUNK))
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
    # Euclidean distances of embeddings centred on the gallery's mean (`centring`).
    shift = centring.offset(distance, gallery)
    query = centring.centred(query, shift)
    gallery = query if leave_one_out else centring.centred(gallery, shift)
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
    cells = max(1, min(CELLS_PER_RELEVANT * window, CELL_BUDGET // chunk))
    g = backend_compile.tensor(sorted_gallery)
    g_ids = backend_compile.tensor(g_id)
    steps = [INITIAL_STEPS]  # grows (shared by the chunks) when a cell is fuller

    def work(begin, stop):
        def padded(a, fill=0):
            return padded_chunk(a, begin, stop, chunk, fill)

        args = (padded(query), padded(q_id, -1), padded(q_start), padded(q_count))
        args += (padded(q_self, -1), g, g_ids)
        grid_fn = _compiled_kernels(distance, window, cells, 0)[0]
        *grid, most = grid_fn(args[0], args[2], args[3], args[4], g)
        most = int(backend_compile.numpy(most))
        if most >= (1 << steps[0]):
            steps[0] = max(steps[0], most.bit_length())
        # Any `steps` >= bit_length(most) is exact; the shared one avoids compiling more.
        _, below_fn, score_fn = _compiled_kernels(distance, window, cells, steps[0])
        below = below_fn(*grid, args[1], g_ids)
        outputs = score_fn(below, args[3], args[4])
        return [backend_compile.numpy(value)[: stop - begin] for value in outputs]

    per_query = zip(*chunks.map_chunks(work, len(query), chunk), strict=True)
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
