"""Search keys: scores that order (query, reference) pairs as a distance does but cost less.

An exact search ranks references by a key, larger is closer, and only the
results' values need the distance itself (`values`). By `kind`:

- `"squared"` (euclidean and squared euclidean): `2 <q, g> - ||g||²`, the
  squared distance less `||q||²` (no square root, no query norm per pair);
- `"inner"`: the inner product, or for the cosine distance `cos - 1` of the
  L2-normalised embeddings clipped to `[-2, 0]`: exactly minus
  `Cosine.pairwise`'s `1 - cos`, so that pairs tie in the keys exactly where
  their distances tie (`1 - cos` rounds cosines near 0 to one value) and a
  search ranks ties as the counting path of `tfmetric.metrics._ranking` does;
- `"distance"` (any other distance): the distance's own `closeness`.

Embeddings are divided by a power of two near their largest magnitude
(exact; keys of embeddings from 1e-30 to 1e19 neither underflow nor
overflow) and the gallery side (`||g||²`) is computed once, not per chunk of
queries. The padding of a gallery cut into blocks gets the term `inf`, hence
the key `-inf` (`key_fn`): no mask per pair. The MAP@R family's search
(`tfmetric.metrics._topk`) and `ExactIndex` (`tfmetric._src.topk`) use them.
"""

import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src import compile as backend_compile
from tfmetric._src import numerics


def kind(distance):
    """How pairs are keyed: `"squared"`, `"inner"` or `"distance"` (see the module docstring)."""
    pairwise = type(distance).pairwise
    if pairwise in (distances_lib.SquaredEuclidean.pairwise, distances_lib.Euclidean.pairwise):
        return "squared"
    if pairwise in (distances_lib.Cosine.pairwise, distances_lib.InnerProduct.pairwise):
        return "inner"
    return "distance"


def scale(distance, *arrays):
    """The power of two the embeddings are divided by (`1` where none is needed)."""
    if kind(distance) == "distance" or isinstance(distance, distances_lib.Cosine):
        return np.float32(1.0)
    largest = max(float(np.abs(a).max(initial=0.0)) for a in arrays)
    if not 0.0 < largest < np.inf:
        return np.float32(1.0)
    return np.float32(2.0 ** np.floor(np.log2(largest)))


def operands(distance, embeddings, factor):
    """Numpy float32 embeddings as the keys take them: divided by `factor` or normalised."""
    if isinstance(distance, distances_lib.Cosine) and kind(distance) == "inner":
        tensor = numerics.l2_normalize(backend_compile.tensor(embeddings))
        return backend_compile.numpy(tensor).astype(np.float32)
    return (embeddings / factor).astype(np.float32)


def gallery_term(distance, gallery):
    """`||g||²` of the (prepared) gallery rows for the `"squared"` keys, else zeros."""
    if kind(distance) == "squared":
        return np.einsum("ij,ij->i", gallery, gallery, dtype=np.float32)
    return np.zeros(len(gallery), np.float32)


def key_fn(distance):
    """`(queries, block, block_term) -> (chunk, block)` keys, larger is closer.

    `block_term` is subtracted from the matrix-product keys: `||g||²` for the
    euclidean keys, else zero; `inf` for the padding of a gallery block,
    whose keys are then `-inf` (no mask; any other distance has one select).
    """
    if kind(distance) == "distance":
        # Any distance: its padding key is set, not computed (a user's distance
        # may give inf or NaN on the zero rows of the padding).
        return lambda q, block, term: ops.where(
            ops.isinf(term)[None, :], -np.inf, distance.closeness(q, block)
        )
    if isinstance(distance, distances_lib.Cosine):
        # Minus `Cosine.pairwise`'s clipped `1 - cos`, bitwise (negation is exact).
        return lambda q, block, term: (
            ops.clip(numerics.matmul(q, ops.transpose(block)) - 1.0, -2.0, 0.0) - term[None, :]
        )
    factor = 1.0 if kind(distance) == "inner" else 2.0
    return lambda q, block, term: factor * numerics.matmul(q, ops.transpose(block)) - term[None, :]


def values(distance, keys, queries, factor):
    """The distance's values of the pairs with `keys` (`(chunk, k)`), from the keys (numpy).

    `queries` are the chunk's prepared queries and `factor` the power of two
    they were divided by. Squared distances are `||q||² - key` (at least 0),
    scaled back exactly; inner products likewise; cosine distances are
    minus the keys, in `[0, 2]`; any other distance converts its closeness. Keys of
    `-inf` (no reference) give `inf` (`-inf` for a similarity).
    """
    if kind(distance) == "distance":
        converted = distance.from_closeness(backend_compile.tensor(keys))
        return backend_compile.numpy(converted).astype(np.float32)
    found = np.isfinite(keys)
    if kind(distance) == "squared":
        norms = np.einsum("ij,ij->i", queries, queries, dtype=np.float32)[:, None]
        squared = np.maximum(norms - np.where(found, keys, 0.0), 0.0)
        if isinstance(distance, distances_lib.Euclidean):
            result = np.sqrt(squared) * factor
        else:
            result = squared * factor * factor
    elif isinstance(distance, distances_lib.Cosine):
        result = -keys
    else:
        result = keys * factor * factor  # both sides were divided by `factor`
    missing = -np.inf if distance.is_similarity else np.inf
    return np.where(found, result, missing).astype(np.float32)
