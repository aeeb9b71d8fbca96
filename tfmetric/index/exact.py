"""Exact (brute-force) nearest-neighbour search: chunked matmul + top-k under XLA."""

import keras
import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import cache, validation
from tfmetric._src import compile as backend_compile
from tfmetric.index.base import Index

_COMPILED = cache.FunctionCache()


def _search_fn(distance, k):
    """A compiled `(queries, gallery blocks, valid) -> (scores, positions)`.

    Scores are oriented so that larger is closer (negated distances). The
    gallery arrives as `(blocks, block_size, d)`; a while loop keeps the best
    `k` so far and merges each block's top-k into it. `tf.math.top_k` puts the
    lower index first among equal values, and earlier blocks come first in
    the merge, so ties go to the embedding added first.
    """
    return _COMPILED.get((distance, k), lambda: _build_search(distance, k))


def _build_search(distance, k):

    def search(queries, blocks, valid):
        num_blocks, block_size = blocks.shape[0], blocks.shape[1]
        chunk = queries.shape[0]

        def body(i, best_scores, best_positions):
            scores = distance.closeness(queries, blocks[i])
            scores = ops.where(valid[i][None, :], scores, -np.inf)
            top_scores, top = ops.top_k(scores, k)
            merged_scores = ops.concatenate([best_scores, top_scores], axis=1)
            merged = ops.concatenate(
                [best_positions, ops.cast(top, "int32") + i * block_size], axis=1
            )
            best_scores, chosen = ops.top_k(merged_scores, k)
            return i + 1, best_scores, ops.take_along_axis(merged, chosen, axis=1)

        _, best_scores, best_positions = ops.while_loop(
            lambda i, *_: i < num_blocks,
            body,
            (
                ops.convert_to_tensor(0, "int32"),
                ops.full((chunk, k), -np.inf, "float32"),
                ops.zeros((chunk, k), "int32"),
            ),
        )
        return distance.from_closeness(best_scores), best_positions

    return backend_compile.backend_jit(search)


@keras.saving.register_keras_serializable(package="tfmetric")
class ExactIndex(Index):
    """Exact k-nearest-neighbour index over any `tfmetric.distances` distance.

    Search is brute force: queries are processed in chunks of
    `query_chunk_size` against the gallery in blocks of `gallery_chunk_size`
    (the last ones padded, so every call has the same static shapes), with a
    matrix product and `tf.math.top_k` per block and a running top-k merge,
    all inside one XLA-compiled function. Memory is O(query chunk × gallery
    block); the full distance matrix is never built. Results are exact; among
    equidistant neighbours the one added first comes first.

    Args:
        distance: Name, config or `tfmetric.distances.Distance`; similarities
            return the largest values first. Defaults to `"euclidean"`.
        query_chunk_size: Queries per compiled call. Defaults to `1024`.
        gallery_chunk_size: Stored embeddings per block. Defaults to `16384`.

    Example:

    >>> index = tfmetric.index.ExactIndex()
    >>> index.add(np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]]), labels=[7, 8, 9])
    >>> ids, distances, labels = index.search(np.array([[0.9, 0.0]]), k=2)
    >>> ids.tolist(), np.round(distances, 3).tolist(), labels.tolist()
    ([[1, 0]], [[0.1, 0.9]], [[8, 7]])

    Bad input raises a `ValueError`: a dimension mismatch, NaN/Inf values,
    `k < 1`, `k` larger than the index (ask for at most `index.size`) or a
    search on an empty index.
    """

    def __init__(self, distance="euclidean", query_chunk_size=1024, gallery_chunk_size=16384):
        self.query_chunk_size = validation.check_int(query_chunk_size, "query_chunk_size")
        self.gallery_chunk_size = validation.check_int(gallery_chunk_size, "gallery_chunk_size")
        super().__init__(distance)

    def _changed(self):
        self._blocks = None

    def _gallery_blocks(self, k):
        block = max(k, min(self.gallery_chunk_size, self.size))
        if self._blocks is None or self._blocks[0].shape[1] != block:
            num_blocks = -(-self.size // block)
            pad = num_blocks * block - self.size
            padded = np.concatenate(
                [self._embeddings, np.zeros((pad, self.dim), np.float32)]
            ).reshape(num_blocks, block, self.dim)
            valid = (np.arange(num_blocks * block) < self.size).reshape(num_blocks, block)
            self._blocks = (backend_compile.tensor(padded), backend_compile.tensor(valid))
        return self._blocks

    def _search(self, queries, k):
        search = _search_fn(self.distance, k)
        blocks, valid = self._gallery_blocks(k)
        chunk = min(self.query_chunk_size, len(queries))
        distances, positions = [], []
        for begin in range(0, len(queries), chunk):
            part = queries[begin : begin + chunk]
            rows = len(part)
            if rows < chunk:
                part = np.concatenate([part, np.zeros((chunk - rows, self.dim), np.float32)])
            d, p = search(backend_compile.tensor(part), blocks, valid)
            distances.append(backend_compile.numpy(d)[:rows])
            positions.append(backend_compile.numpy(p)[:rows])
        return np.concatenate(positions).astype(np.int64), np.concatenate(distances)

    def get_config(self):
        return {
            "distance": distances_lib.serialize(self.distance),
            "query_chunk_size": self.query_chunk_size,
            "gallery_chunk_size": self.gallery_chunk_size,
        }
