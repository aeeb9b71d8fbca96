"""An index kept in step with a store's writes without copying it on every write."""

import numpy as np

# Pending writes are merged into the index once they reach this count, or 1% of the index.
_MIN_PENDING = 256


class LiveIndex:
    """A `tfmetric.index` index plus the writes not merged into it yet.

    Rewriting an index's arrays costs O(size) per change (and an
    `ExactIndex` re-pads its gallery at the next search), so single-item
    writes do not touch it: new and replaced embeddings wait in a small
    pending set, searched by brute force beside the index, and keys deleted or
    replaced in the index are masked out of its results. Once the pending
    writes reach `max(256, size / 100)` they are merged in one `remove` and one
    `add`. Results are the same as those of one index holding every live item.

    Args:
        index: An empty `tfmetric.index` index.
    """

    def __init__(self, index):
        self.index = index
        self.distance = index.distance
        self._in_index = set()
        self._dead = set()
        self._pending = {}

    def __len__(self):
        return len(self._in_index) - len(self._dead) + len(self._pending)

    def load(self, keys, embeddings):
        """Fills the (empty) index in bulk."""
        self.index.add(embeddings, ids=keys)
        self._in_index.update(int(k) for k in keys)

    def put(self, keys, embeddings):
        for key, vector in zip(keys, embeddings, strict=True):
            key = int(key)
            if key in self._in_index:
                self._dead.add(key)
            self._pending[key] = np.asarray(vector, np.float32)
        self._maybe_merge()

    def remove(self, keys):
        for key in keys:
            key = int(key)
            self._pending.pop(key, None)
            if key in self._in_index:
                self._dead.add(key)
        self._maybe_merge()

    def _maybe_merge(self):
        if len(self._pending) + len(self._dead) >= max(_MIN_PENDING, len(self._in_index) // 100):
            self.merge()

    def merge(self):
        """Applies the pending writes to the index."""
        if self._dead:
            self.index.remove(sorted(self._dead))
            self._in_index -= self._dead
            self._dead = set()
        if self._pending:
            keys = np.fromiter(self._pending, np.int64, len(self._pending))
            self.index.add(np.stack(list(self._pending.values())), ids=keys)
            self._in_index.update(self._pending)
            self._pending = {}

    def search(self, query, depth):
        """Keys and distances of the `depth` live items nearest to `query`, closest first."""
        keys, distances = [], []
        if self.index.size:
            # A power of two: an ExactIndex compiles one search per `k`.
            wanted = min(self.index.size, 1 << (depth + len(self._dead) - 1).bit_length())
            found, values, _ = self.index.search(query[None], wanted)
            found, values = found[0], values[0]
            alive = (found >= 0) & ~np.isin(found, np.fromiter(self._dead, np.int64))
            keys.append(found[alive].astype(np.int64))
            distances.append(values[alive])
        if self._pending:
            keys.append(np.fromiter(self._pending, np.int64, len(self._pending)))
            vectors = np.stack(list(self._pending.values()))
            distances.append(np.asarray(self.distance(query[None], vectors))[0])
        if not keys:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        keys, distances = np.concatenate(keys), np.concatenate(distances)
        order = np.argsort(self.distance.to_dissimilarity(distances), kind="stable")
        return keys[order[:depth]], distances[order[:depth]]
