"""Approximate nearest-neighbour search with faiss (optional `ann` extra)."""

import keras
import numpy as np

from tfmetric import distances as distances_lib
from tfmetric._src import validation
from tfmetric.index.base import Index

_SUPPORTED = ("euclidean", "squared_euclidean", "cosine", "inner_product")
# Below this size an inverted file buys nothing: search is exhaustive (faiss flat).
_MIN_IVF_SIZE = 4096


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "ApproximateIndex needs faiss: `pip install tfmetric[ann]` (or `pip install "
            "faiss-cpu`)."
        ) from None
    return faiss


@keras.saving.register_keras_serializable(package="tfmetric")
class ApproximateIndex(Index):
    """Approximate k-nearest-neighbour index (faiss inverted file, IVF-Flat).

    Same interface as `ExactIndex` (`add`, `search`, `save`, `load`). The
    stored embeddings are partitioned into `nlist` k-means cells; a search
    scans the `nprobe` cells nearest to each query, so it is much faster than
    exhaustive search on large indexes and may miss some true neighbours. The
    faiss structure is (re)built lazily at the first `search` after an `add`
    or a `load` (files hold the embeddings, not the faiss structure).
    Indexes smaller than 4096 embeddings are searched exhaustively.

    Where a query's probed cells hold fewer than `k` embeddings, the missing
    neighbours are returned with id `-1`, label `-1` and distance `inf`
    (`-inf` for a similarity).

    Requires `faiss` (`pip install tfmetric[ann]`).

    Args:
        distance: `"euclidean"`, `"squared_euclidean"`, `"cosine"` or
            `"inner_product"` (name or instance). Defaults to `"euclidean"`.
        nlist: Number of cells; `None` chooses `4 * sqrt(size)`, at most
            `size / 39` (faiss's minimum of points per centroid). Defaults to
            `None`.
        nprobe: Cells scanned per query. Defaults to `16`.
        seed: Seed of faiss's k-means. Defaults to `1234`.

    Example:

    >>> index = tfmetric.index.ApproximateIndex(distance="cosine")  # needs `pip install tfmetric[ann]`
    >>> index.add(np.random.default_rng(0).normal(size=(1000, 16)))
    >>> ids, distances, labels = index.search(np.ones((2, 16)), k=5)
    >>> ids.shape
    (2, 5)

    Reference:
        Jégou, Douze, Schmid. "Product Quantization for Nearest Neighbor
        Search". TPAMI 2011 (the inverted file); Johnson, Douze, Jégou.
        "Billion-scale similarity search with GPUs". 2017 (faiss).
    """

    def __init__(self, distance="euclidean", nlist=None, nprobe=16, seed=1234):
        name = distances_lib.get(distance).name
        if name not in _SUPPORTED or type(distances_lib.get(distance)) not in (
            distances_lib.Euclidean,
            distances_lib.SquaredEuclidean,
            distances_lib.Cosine,
            distances_lib.InnerProduct,
        ):
            raise ValueError(
                f"`distance` must be one of {list(_SUPPORTED)} for ApproximateIndex; got "
                f"{distance!r}. Use ExactIndex for other distances."
            )
        self.nlist = None if nlist is None else validation.check_int(nlist, "nlist")
        self.nprobe = validation.check_int(nprobe, "nprobe")
        self.seed = validation.check_int(seed, "seed", minimum=0)
        super().__init__(distance)

    def _changed(self):
        self._faiss_index = None

    def _vectors(self, x):
        if self.distance.name == "cosine":
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    def _build(self):
        faiss = _import_faiss()
        vectors = np.ascontiguousarray(self._vectors(self._embeddings), np.float32)
        inner = self.distance.name in ("cosine", "inner_product")
        metric = faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2
        quantizer = faiss.IndexFlatIP(self.dim) if inner else faiss.IndexFlatL2(self.dim)
        nlist = self.nlist or int(4 * np.sqrt(self.size))
        nlist = max(1, min(nlist, self.size // 39))
        if self.size < _MIN_IVF_SIZE or nlist == 1:
            index = quantizer
        else:
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, metric)
            index.cp.seed = self.seed
            index.train(vectors)
            index.nprobe = min(self.nprobe, nlist)
        index.add(vectors)
        self._faiss_index = index

    def _search(self, queries, k):
        if self._faiss_index is None:
            self._build()
        vectors = np.ascontiguousarray(self._vectors(queries), np.float32)
        values, positions = self._faiss_index.search(vectors, k)
        missing = positions < 0
        name = self.distance.name
        if name == "euclidean":
            values = np.sqrt(np.maximum(values, 0.0))
        elif name == "squared_euclidean":
            values = np.maximum(values, 0.0)
        elif name == "cosine":
            values = np.clip(1.0 - values, 0.0, 2.0)
        fill = self.distance.from_closeness(-np.inf)
        values = np.where(missing, fill, values).astype(np.float32)
        return positions.astype(np.int64), values

    def get_config(self):
        return {
            "distance": distances_lib.serialize(self.distance),
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "seed": self.seed,
        }
