"""Precise euclidean distances for embeddings of large norm: a common offset, exact values.

A squared euclidean distance computed as `||x||² + ||y||² - 2 <x, y>` in
float32 has an absolute error of about `eps * ||x||²` (`eps = 6e-8`): a
distance of 1 between raw 0-255 pixel vectors (`||x||² ~ 1e7`) is lost.
Euclidean distances are translation-invariant, so the searches and the
metrics subtract one common offset `c` (the mean of the gallery, rounded to
a coarse grid: `offset`) from queries and gallery first: the error becomes
`eps * ||x - c||²`, the spread of the embeddings rather than their norm
(O(n·d), once per call). Distances computed directly (manhattan, Minkowski,
`Distance.paired`) need nothing. The few values an exact search returns are
computed from the differences of the gathered rows (`direct_values`), and the
numpy-side metrics compute their blocks in float64 (`dissimilarities`).
"""

import keras
import numpy as np

from tfmetric import distances as distances_lib
from tfmetric._src import cache, compile, search_keys

# Rows of the evenly spaced sample that estimates the spread in `offset`.
_SPREAD_SAMPLE = 1024
# Most float64 elements of one `(rows, k, d)` difference block in `direct_values`.
_DIFFERENCE_ELEMENTS = 1 << 22
# `dissimilarities`' compiled distance matrices under JAX.
_COMPILED = cache.FunctionCache()


def translation_invariant(distance):
    """Whether `distance` is the (squared) euclidean distance, ranked through `||x - y||²`."""
    return search_keys.kind(distance) == "squared"


def offset(distance, reference):
    """The float32 offset that centres embeddings for `distance`, or `None` where none is used.

    The mean of `reference` (float64) rounded to a multiple of `2**floor(log2(s))`,
    `s` the root mean square of the per-feature standard deviations: within
    `s / 2` of the mean per feature (the norms stay about the spread), and
    coarse, so that centring keeps exact ties exact: integers and other
    embeddings on a grid at least that coarse stay on it, and their
    products stay exactly representable (with the plain mean, `x - 0.0333`
    breaks the ties of small integer embeddings).

    Args:
        distance: A `tfmetric.distances.Distance`.
        reference: `(n, d)` embeddings.
    """
    if not translation_invariant(distance) or not len(reference):
        return None
    mean = np.mean(reference, axis=0, dtype=np.float64)
    # The spread only picks a power of two: evenly spaced rows estimate it (cheap).
    sample = reference[:: max(1, len(reference) // _SPREAD_SAMPLE)]
    spread = np.sqrt(np.mean(np.square(sample - mean, dtype=np.float64)))
    if not 0.0 < spread < np.inf:
        return mean.astype(np.float32)  # identical rows: centred exactly to 0
    step = 2.0 ** np.floor(np.log2(spread))
    return (np.round(mean / step) * step).astype(np.float32)


def centred(embeddings, shift):
    """`embeddings - shift` in float32 (one rounding), or `embeddings` where `shift` is `None`."""
    if shift is None:
        return embeddings
    return np.asarray(embeddings, np.float32) - shift


def _finish(distance, squared):
    if isinstance(distance, distances_lib.Euclidean):
        return np.sqrt(squared)
    return squared


def direct_values(distance, queries, gallery, positions):
    """Exact (squared) euclidean distances of `queries[i]` to `gallery[positions[i, j]]`.

    Computed from the differences of the rows in float64 (O(q·k·d)), rounded
    once to float32; `positions < 0` (no neighbour) gives `inf`.

    Args:
        distance: A translation-invariant distance (`translation_invariant`).
        queries: `(q, d)` embeddings.
        gallery: `(n, d)` embeddings.
        positions: `(q, k)` int rows of `gallery`.

    Returns:
        `(q, k)` float32 distances.
    """
    found = positions >= 0
    rows = max(1, _DIFFERENCE_ELEMENTS // max(1, positions.shape[1] * gallery.shape[1]))
    squared = np.empty(positions.shape, np.float64)
    for begin in range(0, len(positions), rows):
        part = slice(begin, begin + rows)
        neighbours = gallery[np.where(found[part], positions[part], 0)].astype(np.float64)
        difference = neighbours - np.asarray(queries[part], np.float64)[:, None, :]
        squared[part] = np.einsum("ijk,ijk->ij", difference, difference)
    with np.errstate(over="ignore"):
        values = _finish(distance, squared).astype(np.float32)
    return np.where(found, values, np.float32(np.inf))


def dissimilarities(distance, x, y, shift=None):
    """The float64 `to_dissimilarity` matrix of `distance` between numpy `x` and `y`.

    Translation-invariant distances are computed in float64 on `x - c` and
    `y - c` (`c = shift`, else `offset(distance, y)`); any other distance is
    the library's float32 matrix. Under JAX that matrix is jit-compiled, once
    per distance and shapes: run eagerly, a distance's loops (manhattan's
    feature blocks, ...) are traced anew on every call (`benchmarks/few_shot.py`);
    TensorFlow runs them eagerly at no such cost.
    """
    if not translation_invariant(distance):
        matrix = distance
        if keras.backend.backend() == "jax":
            matrix = _COMPILED.get(distance, lambda: compile.backend_jit(distance.__call__))
        x, y = (compile.tensor(np.asarray(a, np.float32)) for a in (x, y))
        return distance.to_dissimilarity(np.asarray(compile.numpy(matrix(x, y)), np.float64))
    return centred_dissimilarities(distance, x, y, offset(distance, y) if shift is None else shift)


def centred_dissimilarities(distance, x, y, shift):
    """`dissimilarities` of a translation-invariant `distance`, batched over leading axes.

    `||x - c||² + ||y - c||² - 2 <x - c, y - c>` in float64 (`c = shift`, from
    `offset`): `(n, d)` and `(m, d)` give `(n, m)`; groups `(g, n, d)` and
    `(g, m, d)` give each group's own `(g, n, m)` block.
    """
    c = np.asarray(shift, np.float64)
    x = np.asarray(x, np.float64) - c
    y = np.asarray(y, np.float64) - c
    squared = (
        np.einsum("...ij,...ij->...i", x, x)[..., :, None]
        + np.einsum("...ij,...ij->...i", y, y)[..., None, :]
        - 2.0 * np.matmul(x, np.swapaxes(y, -1, -2))
    )
    return _finish(distance, np.maximum(squared, 0.0))
