"""A bounded cache of compiled functions, keyed by distance and arguments.

Keys hold the `Distance` itself, so they follow its equality: built-in
distances are equal when their configurations are, while the view of a
learned distance (`tfmetric.layers.Mahalanobis`, `WeightedL1`) is equal
only to views of the same layer. Two layers with the same configuration
(after `keras.backend.clear_session()`, or two checkpoints of one model) thus
never share a function traced on the other's weights. The least recently
used entries are dropped beyond `maxsize`, so the cache does not grow with
every distance ever seen.
"""

import collections
import threading


class FunctionCache:
    """Least-recently-used cache `key -> function`, at most `maxsize` entries."""

    def __init__(self, maxsize=16):
        self.maxsize = maxsize
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, build):
        """The function cached under `key`, built by `build()` on a miss."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        function = build()
        with self._lock:
            self._entries[key] = function
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return function

    def __len__(self):
        return len(self._entries)

    def clear(self):
        with self._lock:
            self._entries.clear()
