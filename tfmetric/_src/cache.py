"""A bounded cache of compiled functions, keyed by distance and arguments.

Keys hold the `Distance` itself, so they follow its equality: built-in
distances are equal when their configurations are, while the view of a
learned distance (`tfmetric.layers.Mahalanobis`, `WeightedL1`) is equal
only to views of the same layer. Two layers with the same configuration
(after `keras.backend.clear_session()`, or two checkpoints of one model) thus
never share a function traced on the other's weights. The least recently
used entries are dropped beyond `maxsize`, so the cache does not grow with
every distance ever seen.

Under JAX a compiled function holds the values a learned distance's weights
had when it was traced (`jax.jit` captures them as constants; TensorFlow reads
the variables at every call): there the key also holds a digest of those
values, so that a function traced before the weights changed (an epoch of
training between two evaluations) is never called after.
"""

import collections
import hashlib
import threading

import keras
import numpy as np


class FunctionCache:
    """Least-recently-used cache `key -> function`, at most `maxsize` entries."""

    def __init__(self, maxsize=16):
        self.maxsize = maxsize
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, build):
        """The function cached under `key`, built by `build()` on a miss."""
        if keras.backend.backend() == "jax":
            key = (key, _weight_digests(key))
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


def _weight_digests(key):
    """Digests of the current weights of the learned distances in a tuple `key`."""
    from tfmetric import distances  # the distances module imports nothing of this one

    digests = []
    for item in key if isinstance(key, tuple) else (key,):
        weights = item.get_weights() if isinstance(item, distances.Distance) else []
        if weights:  # read once: a learned distance copies its weights to the host
            data = b"".join(np.ascontiguousarray(w).tobytes() for w in weights)
            digests.append(hashlib.sha256(data).hexdigest())
    return tuple(digests)
