"""Exact top-k search over a gallery scanned in blocks: the one implementation.

`top_k_blocks` is written with `keras.ops`, so the same code is traced by
`tf.function` (the exact index and the metrics under TensorFlow, and the
SavedModel's `retrieve` signature, a plain TensorFlow graph), compiled by XLA
(`tf.function(jit_compile=True)`) or by `jax.jit`. Per gallery block it takes
a matrix of scores (larger is closer), its `k` best columns with `top_k`, and
merges them into the best `k` so far. Up to `UNROLL` blocks are unrolled and
XLA may keep each block's scores at once (memory O(queries × gallery)); beyond
(and always for `search_gallery`), the blocks are a loop and memory is
O(queries × block), whatever the gallery size. `top_k` puts the
lower index first among equal scores and earlier blocks come first in the
merge, so ties go to the lower gallery position, as a stable sort would.
(`torch.topk` does not order ties, so under PyTorch `_top_k` is a stable
descending sort.)

`search_gallery` drives it from numpy: queries in chunks of fixed shape (the
last one padded), the gallery in blocks of equal size (`SearchGallery`; the
padding's search keys are `-inf`), ranked by `tfmetric._src.search_keys`.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from tfmetric._src import cache, centring, chunks, search_keys
from tfmetric._src import compile as backend_compile

_COMPILED = cache.FunctionCache()

# Gallery blocks beyond which the scan is a loop rather than unrolled.
UNROLL = 8
# Selection through the maxima of groups of `GROUP` columns when the order of
# ties is free and a block of whole tiles holds at least
# `GROUPED_MIN_RATIO * GROUP * k` columns (see `_grouped_top_k`; below that two
# `top_k` calls cost more than one). The groups lie side by side, `LANES` of
# them in each tile of `GROUP * LANES` consecutive columns.
GROUP = 16
LANES = 16
GROUPED_MIN_RATIO = 2
# Gallery blocks of a multi-block search are rounded up to this many rows (`block_rows`).
BLOCK_ROUND = 1024
# Under JAX on CPU, XLA's runtime allocates a call's temporary buffers anew on every
# call, and glibc maps requests above 32 MiB freshly from the system: every page
# then faults on first touch. Chunks of at least `JAX_MIN_QUERY_CHUNK` queries
# whose temporaries fit `JAX_TEMP_BUDGET` avoid it: with the search's XLA
# options (`backend_jit(..., fused_elementwise=True)`) they are the float32 score
# matrix and ~15% more (`memory_analysis()`: 1.13-1.15 matrices at 20k-100k),
# `JAX_TEMP_BYTES` per (query, column). 20k x 20k: 2.3 s with chunks of 1,000
# queries, 1.35 with 176, 1.2 with 288-336; 100k galleries: 700 CPU-us per
# query with 256, 520-560 with 56-72 (fewer than ~48 pay for re-packing the gallery).
JAX_TEMP_BUDGET = 30 << 20
JAX_TEMP_BYTES = 4.6
JAX_MIN_QUERY_CHUNK = 48


def tile():
    """Columns per tile of `LANES` groups of `GROUP` columns."""
    return GROUP * LANES


def jax_query_chunk(chunk, columns):
    """`chunk`, or under JAX on CPU the fewer queries whose temporaries fit `JAX_TEMP_BUDGET`.

    `columns`: the gallery columns a call scores (all its blocks: XLA keeps
    the unrolled blocks' score matrices apart). Unchanged where fewer than
    `JAX_MIN_QUERY_CHUNK` queries would fit, and off JAX or off the CPU.
    """
    if not backend_compile.jax_on_cpu():
        return chunk
    fits = int(JAX_TEMP_BUDGET / (JAX_TEMP_BYTES * max(1, columns))) // 8 * 8
    return min(chunk, fits) if fits >= JAX_MIN_QUERY_CHUNK else chunk


def _set_size(groups, k):
    """Groups per set whose best maximum enters the first selection first.

    The largest power of two that divides `groups` and leaves at least `k`
    sets: ~k first values, the best of ~groups / k groups each (fewer heap
    entries than smaller or larger sets; simulated and measured at 20k and
    100k columns).
    """
    size = 1
    while groups % (2 * size) == 0 and groups // (2 * size) >= k:
        size *= 2
    return size


def grouped_width(width, k):
    """`width` padded to whole tiles and to sets of the size `_set_size` wants for it."""
    padded = -(-width // tile()) * tile()
    size = 1
    while (padded // GROUP) // (2 * size) >= k:
        size *= 2
    unit = math.lcm(tile(), GROUP * size)
    return -(-width // unit) * unit


def _top_k(scores, k):
    """`ops.top_k(scores, k)` over the last axis, lower index first among equal scores."""
    if keras.backend.backend() == "torch":
        import torch

        values, positions = torch.sort(scores, dim=-1, descending=True, stable=True)
        return values[..., :k], positions[..., :k]
    return ops.top_k(scores, k)


def _grouped(width, k):
    """Whether `_block_top_k` selects through group maxima for this block width and `k`."""
    return width % tile() == 0 and width >= GROUPED_MIN_RATIO * GROUP * k


def _grouped_top_k(scores, k):
    """`top_k(scores, k)` through the maxima of groups of `GROUP` columns; ties in any order.

    Exact: the `k` best columns lie in the `k` groups with the best maxima (a
    group ranked before the group of one of them holds a column ranked before
    it, so at most `k - 1` groups do). Two `top_k` calls, over the
    `width / GROUP` maxima and over the `k * GROUP` members of the chosen
    groups, replace one over `width` columns: XLA's CPU `TopK` is a heap that
    costs ~2 ns per column scanned plus ~80 ns per column that enters it, and
    on columns in random order ~k ln(width / k) of them enter.

    Layout: a tile of `GROUP * LANES` consecutive columns holds `LANES` groups
    side by side; member `m` of group `l` of tile `t` is column
    `t * GROUP * LANES + m * LANES + l`. The maxima are elementwise maxima of
    `GROUP` contiguous runs of `LANES` columns (vectorised, one pass over the
    block) and a group's members lie within one tile (its candidates are
    gathered from a few cache lines, not from across the row).

    Order of the selections' inputs (the exact result does not depend on it,
    the cost does): the best maximum of each set of `_set_size` groups
    comes first, then the other maxima (heap entries at k = 139-148: ~300
    -> ~90 at 20,480 columns, sets of 8; ~600 -> ~110 at 100,352, sets of
    32); the second selection starts with the chosen groups' maxima, already
    the best values, then their other members. The order among equal scores
    is unspecified, so callers that promise ties to the lower position
    (`ExactIndex`) do not use it.
    """
    width = scores.shape[1]
    tiles = width // tile()
    groups = tiles * LANES
    size = _set_size(groups, k)
    per = groups // size
    tiled = ops.reshape(scores, (-1, tiles, GROUP, LANES))
    # (rows, groups): group `t * LANES + l`.
    maxima = ops.reshape(ops.max(tiled, axis=2), (-1, groups))
    if size == 1:
        maxima, chosen = _top_k(maxima, k)
        return _members_top_k(tiled, maxima, ops.cast(chosen, "int32"), k)
    # Set `j` of `size` groups: groups `j, j + per, ...`; its best group first.
    sets = ops.reshape(maxima, (-1, size, per))
    best = ops.cast(ops.argmax(sets, axis=1), "int32")
    is_best = ops.equal(ops.arange(size, dtype="int32")[None, :, None], best[:, None, :])
    rest = ops.reshape(ops.where(is_best, -np.inf, sets), (-1, groups))
    first_groups = best * per + ops.arange(per, dtype="int32")[None, :]
    maxima, slots = _top_k(ops.concatenate([ops.max(sets, axis=1), rest], axis=1), k)
    slots = ops.cast(slots, "int32")
    # Slot `s < per` holds the best group of set `s`, slot `per + c` group `c`.
    chosen = ops.where(
        slots < per,
        ops.take_along_axis(first_groups, ops.minimum(slots, per - 1), axis=1),
        slots - per,
    )  # (rows, k)
    return _members_top_k(tiled, maxima, chosen, k)


def _members_top_k(tiled, maxima, chosen, k):
    """The best `k` members of the `chosen` groups (`(rows, k)`, their `maxima` sorted)."""
    tiles = tiled.shape[1]
    groups = tiles * LANES
    # (rows * groups, GROUP): the members of each group; rows of it gathered whole.
    members = ops.reshape(ops.transpose(tiled, (0, 1, 3, 2)), (-1, GROUP))
    row_start = ops.arange(ops.shape(tiled)[0], dtype="int32")[:, None] * groups
    candidates = ops.take(members, row_start + chosen, axis=0)  # (rows, k, GROUP)
    top = ops.cast(ops.argmax(candidates, axis=2), "int32")
    is_top = ops.equal(ops.arange(GROUP, dtype="int32")[None, None, :], top[:, :, None])
    others = ops.reshape(ops.where(is_top, -np.inf, candidates), (-1, k * GROUP))
    values, where = _top_k(ops.concatenate([maxima, others], axis=1), k)
    # Column of member `m` of group `c`: (c // LANES) * TILE + m * LANES + c % LANES;
    # selected slot `w < k` is the maximum of chosen group `w`, slot
    # `k + j * GROUP + m` member `m` of chosen group `j`.
    base = (chosen // LANES) * tile() + chosen % LANES
    where = ops.cast(where, "int32")
    is_maximum = where < k
    slot = ops.where(is_maximum, where, (where - k) // GROUP)
    member = ops.where(is_maximum, ops.take_along_axis(top, slot, axis=1), (where - k) % GROUP)
    return values, ops.take_along_axis(base, slot, axis=1) + LANES * member


def _block_top_k(scores, k, stable=True):
    """`top_k(scores, k)`, with `-inf` columns appended when a block is narrower than `k`."""
    width = scores.shape[1]
    if width < k:
        scores = ops.pad(scores, [[0, 0], [0, k - width]], constant_values=-np.inf)
    elif not stable and _grouped(width, k):
        return _grouped_top_k(scores, k)
    values, positions = _top_k(scores, k)
    return values, ops.cast(positions, "int32")


def top_k_blocks(queries, blocks, score_fn, k, stable=True, unroll=None):
    """The `k` best gallery positions of each query, best first.

    Args:
        queries: `(queries, d)` tensor (the first dimension may be unknown).
        blocks: `(num_blocks, block, d)` tensor: the gallery cut into blocks,
            position `i * block + j` being row `j` of block `i`.
        score_fn: `score_fn(queries, block, i)` -> `(queries, block)` scores,
            larger is closer (`-inf` for an excluded item or the padding of a
            block, never returned); `i` is the block number (a Python int or
            a scalar int32 tensor).
        k: Number of results (static); may exceed the number of items.
        stable: Equal scores keep the lower position first (as documented
            below); `False` leaves their order unspecified, which saves a
            sort per block (callers whose results do not depend on the order
            of ties: the retrieval metrics).
        unroll: Most blocks scanned unrolled (default `UNROLL`); more are a
            loop, which keeps one block's scores at a time (unrolled, XLA
            may keep them all).

    Returns:
        `(scores, positions)`, each `(queries, k)`: scores sorted descending,
        ties by increasing position; where fewer than `k` items have a finite
        score, the remaining slots hold `-inf` and position `-1`.
    """
    num_blocks, block_size = blocks.shape[0], blocks.shape[1]

    def block_scores(i):
        return score_fn(queries, blocks[i], i)

    def body(i, best, best_positions):
        scores, positions = _block_top_k(block_scores(i), k, stable)
        merged = ops.concatenate([best, scores], axis=1)
        merged_positions = ops.concatenate([best_positions, positions + i * block_size], axis=1)
        best, chosen = _top_k(merged, k)
        return i + 1, best, ops.take_along_axis(merged_positions, chosen, axis=1)

    best, best_positions = _block_top_k(block_scores(0), k, stable)
    if num_blocks <= (UNROLL if unroll is None else unroll):
        # A few blocks: unrolled (XLA runs the blocks of a while loop slower).
        for i in range(1, num_blocks):
            _, best, best_positions = body(i, best, best_positions)
    else:
        _, best, best_positions = ops.while_loop(
            lambda i, *_: i < num_blocks,
            body,
            (ops.convert_to_tensor(1, "int32"), best, best_positions),
        )
    return best, ops.where(ops.isfinite(best), best_positions, -1)


def gallery_blocks(gallery, block_size, *extra):
    """Numpy `(blocks, valid, *extra_blocks)`: `gallery` `(n, d)` cut into equal blocks.

    The tail is zero-padded and marked invalid; each array of `extra` (one
    value per gallery row, e.g. labels) is cut the same way, padded with `-1`.
    """
    n = len(gallery)
    num_blocks = max(1, -(-n // block_size))
    pad = num_blocks * block_size - n

    def cut(array, fill):
        if pad:
            tail = np.full((pad,) + array.shape[1:], fill, array.dtype)
            array = np.concatenate([array, tail])
        return array.reshape((num_blocks, block_size) + array.shape[1:])

    valid = cut(np.ones(n, bool), False)
    return (cut(gallery, 0), valid) + tuple(cut(np.asarray(a), -1) for a in extra)


def _search_fn(distance, k, exclude_self, stable):
    key = (distance, k, exclude_self, stable)
    return _COMPILED.get(key, lambda: _build_search(distance, k, exclude_self, stable))


def _build_search(distance, k, exclude_self, stable):
    """Top-`k` search keys and positions of a chunk of prepared queries (`search_keys`)."""
    key_fn = search_keys.key_fn(distance)

    def search(queries, query_positions, blocks, block_terms):
        block_size = blocks.shape[1]

        def score_fn(q, block, i):
            scores = key_fn(q, block, block_terms[i])
            if exclude_self:
                position = i * block_size + ops.arange(block_size, dtype="int32")
                same = ops.equal(position[None, :], query_positions[:, None])
                scores = ops.where(same, -np.inf, scores)
            return scores

        # A loop over several blocks: as fast here as unrolled (100k items:
        # 17.1 s either way) with one block's scores at a time (peak RSS 1.46
        # against 2.27 GiB).
        return top_k_blocks(queries, blocks, score_fn, k, stable=stable, unroll=1)

    return backend_compile.backend_jit(search, fused_elementwise=True)


def block_rows(size, block_size):
    """Rows per gallery block for `size` items: at most `block_size`, as little padding as possible.

    One block of `size` rows rounded up to whole tiles of the grouped
    selection when it fits, else equal blocks rounded up to
    `BLOCK_ROUND` rows (a gallery that grows changes the compiled shapes
    only every few thousand items; 20,000 items in blocks of at most 16,384:
    2 x 10,240 rows, where blocks of 16,384 would compute 32,768 columns).
    """
    size = max(1, size)
    if size <= block_size:
        return min(block_size, -(-size // tile()) * tile())
    num_blocks = -(-size // block_size)
    rows = -(-size // num_blocks)
    return min(block_size, -(-rows // BLOCK_ROUND) * BLOCK_ROUND)


# Queries at most this many times larger than the gallery's power-of-two scale
# share it (their keys and norms stay far from float32's range); larger ones
# are searched on a gallery prepared with their joint scale.
_QUERY_RANGE = 2.0**16


class SearchGallery:
    """A gallery prepared for `search_gallery`: search-key operands in blocks, on the backend.

    Args:
        embeddings: `(n, d)` float32 numpy array.
        distance: A `tfmetric.distances.Distance`.
        block_size: Most rows per gallery block (`block_rows`).
        factor: The power of two the embeddings are divided by; defaults to
            the gallery's own (`search_keys.scale`).
    """

    def __init__(self, embeddings, distance, block_size, factor=None):
        self.embeddings = embeddings
        self.distance = distance
        self.block_size = block_size
        # Euclidean keys of embeddings centred on their mean (`centring`): the
        # offset follows the stored embeddings, so the keys depend on them only.
        self.offset = centring.offset(distance, embeddings)
        centred = centring.centred(embeddings, self.offset)
        self.factor = search_keys.scale(distance, centred) if factor is None else factor
        prepared = search_keys.operands(distance, centred, self.factor)
        term = search_keys.gallery_term(distance, prepared)
        rows = block_rows(len(embeddings), block_size)
        blocks, valid, terms = gallery_blocks(prepared, rows, term)
        terms = np.where(valid, terms, np.float32(np.inf))  # padding: key -inf
        self.blocks, self.terms = (backend_compile.tensor(a) for a in (blocks, terms))

    def for_queries(self, queries):
        """This gallery, or one prepared with the joint scale of much larger `queries`.

        `queries` are centred on `offset` (`centred_queries`).
        """
        if search_keys.scale(self.distance, queries) <= self.factor * _QUERY_RANGE:
            return self
        centred = centring.centred(self.embeddings, self.offset)
        factor = search_keys.scale(self.distance, queries, centred)
        return SearchGallery(self.embeddings, self.distance, self.block_size, factor)

    def centred_queries(self, queries):
        """`queries` less the gallery's `offset` (unchanged where none is used)."""
        return centring.centred(queries, self.offset)


def _stable_order(keys, positions, k):
    """The best `k` in the stable order, from an exact top-`k + 1` in any order among ties.

    Sorted by key, larger first, then by position (`-1`, past the last item,
    stays last); returns `(keys, positions, tied)`, `tied` marking the rows
    whose `k`-th and `k + 1`-th keys are equal and finite: a tie across the
    boundary, where the positions kept may not be the lowest ones.
    """
    # The padding's sort key in the positions' own dtype: numpy 2 does not widen an int32 array for
    # a Python int (int64's maximum wrapped to -1, sorting the padding first; numpy 2.5 raises).
    last = np.iinfo(positions.dtype).max
    order = np.lexsort((np.where(positions < 0, last, positions), -keys))
    keys, positions = (np.take_along_axis(a, order, axis=1) for a in (keys, positions))
    tied = np.isfinite(keys[:, k]) & (keys[:, k] == keys[:, k - 1])
    return keys[:, :k], positions[:, :k], tied


def _direct_order(gallery, queries, keys, positions, k):
    """`_stable_order` by the exact euclidean distances of the candidates (`centring`).

    `queries`: the chunk's queries as given. The candidates of the key search
    are re-ranked by their distances computed from the rows, so that pairs
    closer than the keys' float32 resolution still come out in order.
    Returns `(values, positions, tied)`; `keys` only mark missing candidates.
    """
    positions = np.where(np.isfinite(keys), positions, -1)
    values = centring.direct_values(gallery.distance, queries, gallery.embeddings, positions)
    closeness, positions, tied = _stable_order(-values, positions, k)
    return -closeness, positions, tied


def search_gallery(queries, gallery, k, query_chunk=1024, exclude_self=False):
    """Exact `k` nearest gallery rows of each query, nearest first (numpy in, numpy out).

    Pairs are ranked by search keys (`tfmetric._src.search_keys`: for
    euclidean distances `2 <q, g> - ||g||²`, one matrix product and one
    subtraction per pair, on embeddings centred on the gallery's `offset`)
    and only the results' distance values are computed
    (`search_keys.values`). Euclidean candidates (the `k + 1` best keys) are
    re-ranked by their distances computed from the rows in float64
    (`centring.direct_values`), which are the values returned: exact, and in
    order even where the keys' float32 resolution (about `6e-8 * ||x - c||²`
    in squared distance) cannot tell them apart. Each chunk of queries first runs the
    search without stable ties (the selection through group maxima on wide
    blocks) for `k + 1` results, put in the stable order in numpy
    (`_stable_order`); a chunk with a tie across the `k`-th result runs the
    stable search (equal keys to the lower row) for it, compiled only when
    one does.

    Args:
        queries: `(m, d)` float32 array.
        gallery: A `SearchGallery`.
        k: Number of neighbours.
        query_chunk: Queries per compiled call.
        exclude_self: Query `i` never returns gallery row `i` (the queries
            are the gallery: leave-one-out).

    Returns:
        `(positions, values)`: `(m, k)` int64 gallery rows (`-1` past the
        last item) and the distance values (similarities for a similarity,
        largest first; `inf` (`-inf` for a similarity) past the last item).
        Ties (equal keys: equal distances for duplicates and exactly
        representable embeddings) keep the lower row first.
    """
    k = int(k)
    distance = gallery.distance
    direct = centring.translation_invariant(distance)
    centred = gallery.centred_queries(queries)
    gallery = gallery.for_queries(centred)
    prepared = search_keys.operands(distance, centred, gallery.factor)
    fast = _search_fn(distance, k + 1, bool(exclude_self), stable=False)
    # All blocks' columns: the loop's first block and its body each hold scores
    # (2 blocks of 10,240 and 328 queries: 30.6 MiB of temporaries).
    columns = gallery.blocks.shape[0] * gallery.blocks.shape[1]
    chunk = max(1, min(jax_query_chunk(query_chunk, columns), len(queries)))

    def work(begin, stop):
        part = prepared[begin:stop]
        rows = len(part)
        own = np.arange(begin, begin + chunk, dtype=np.int32)
        if rows < chunk:
            part = np.concatenate([part, np.zeros((chunk - rows,) + part.shape[1:], part.dtype)])
        inputs = (backend_compile.tensor(part), backend_compile.tensor(own))
        inputs += (gallery.blocks, gallery.terms)
        keys, positions = (backend_compile.numpy(a)[:rows] for a in fast(*inputs))
        order = _stable_order
        if direct:
            order = functools.partial(_direct_order, gallery, queries[begin:stop])
        scores, positions, tied = order(keys, positions, k)
        if tied.any():
            stable = _search_fn(distance, k, bool(exclude_self), stable=True)
            exact_keys, exact_positions = (backend_compile.numpy(a)[:rows] for a in stable(*inputs))
            # One missing candidate past the `k`: `order` wants `k + 1` of them.
            exact_scores, exact_positions, _ = order(
                np.pad(exact_keys, ((0, 0), (0, 1)), constant_values=-np.inf),
                np.pad(exact_positions, ((0, 0), (0, 1)), constant_values=-1),
                k,
            )
            scores = np.where(tied[:, None], exact_scores, scores)
            positions = np.where(tied[:, None], exact_positions, positions)
        if direct:
            return scores, positions
        return search_keys.values(distance, scores, part[:rows], gallery.factor), positions

    per_chunk = chunks.map_chunks(work, len(queries), chunk)
    if not per_chunk:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    values, positions = zip(*per_chunk, strict=True)
    return np.concatenate(positions).astype(np.int64), np.concatenate(values)


def search(
    queries, gallery, distance, k, query_chunk=1024, gallery_block=16384, exclude_self=False
):
    """`search_gallery` on `gallery` `(n, d)` cut into blocks of at most `gallery_block` rows."""
    prepared = SearchGallery(gallery, distance, gallery_block)
    return search_gallery(queries, prepared, k, query_chunk, exclude_self)
