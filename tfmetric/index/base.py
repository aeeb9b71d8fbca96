"""Storage, validation and persistence shared by the nearest-neighbour indexes."""

import json
import os
import tempfile

import numpy as np

from tfmetric import distances as distances_lib
from tfmetric.metrics._inputs import check_embeddings, check_labels, check_positive_int

_FORMAT = "tfmetric.index/1"


class Index:
    """Base of the indexes: holds embeddings, labels and ids; subclasses search.

    Subclasses implement `_search(queries, k)` returning `(positions,
    distances)`, positions into the stored embeddings (`-1` for a missing
    neighbour), and keep their constructor arguments in `get_config()`.
    """

    def __init__(self, distance="euclidean"):
        self.distance = distances_lib.get(distance)
        self._embeddings = np.zeros((0, 0), np.float32)
        self._labels = None
        self._ids = np.zeros((0,), np.int64)
        self._changed()

    @property
    def size(self):
        """Number of stored embeddings."""
        return int(self._embeddings.shape[0])

    def __len__(self):
        return self.size

    @property
    def dim(self):
        """Embedding size, or `None` while the index is empty."""
        return int(self._embeddings.shape[1]) if self.size else None

    def add(self, embeddings, labels=None, ids=None):
        """Adds embeddings, with optional integer labels and ids.

        Args:
            embeddings: Float array of shape `(n, d)`; `d` must match the
                embeddings already stored.
            labels: Integer labels of shape `(n,)`. Either every `add` gives
                labels or none does. Defaults to `None`.
            ids: Integer ids of shape `(n,)`, unique in the index. Defaults to
                consecutive integers starting at the current size.

        Raises:
            ValueError: for a wrong shape, a dimension mismatch, NaN/Inf
                values, mismatched lengths, duplicate ids, or labels given to
                an unlabelled index (or missing from a labelled one).
        """
        embeddings = check_embeddings(embeddings, "embeddings")
        n = embeddings.shape[0]
        if self.size and embeddings.shape[1] != self.dim:
            raise ValueError(
                f"`embeddings` have dimension {embeddings.shape[1]} but the index holds "
                f"dimension {self.dim}."
            )
        if labels is not None:
            labels = check_labels(labels, n, "labels", "embeddings")
        if self.size and (labels is None) != (self._labels is None):
            have = "holds labels" if self._labels is not None else "holds no labels"
            raise ValueError(f"The index {have}: pass `labels` to every `add` or to none.")
        if ids is None:
            ids = np.arange(self.size, self.size + n, dtype=np.int64)
        else:
            ids = check_labels(ids, n, "ids", "embeddings")
        if len(np.unique(ids)) != n or np.isin(ids, self._ids).any():
            raise ValueError("`ids` must be unique, and not already in the index.")
        if self.size:
            self._embeddings = np.concatenate([self._embeddings, embeddings])
            self._ids = np.concatenate([self._ids, ids])
            if labels is not None:
                self._labels = np.concatenate([self._labels, labels])
        else:
            self._embeddings = np.array(embeddings, np.float32)
            self._ids = ids
            self._labels = labels
        self._changed()

    def remove(self, ids):
        """Removes the embeddings with the given ids.

        Args:
            ids: Integer ids of shape `(n,)`, each stored in the index.

        Raises:
            KeyError: naming the ids that are not in the index (nothing is
                removed then).
        """
        ids = np.asarray(ids)
        ids = check_labels(ids.reshape(-1), ids.size, "ids", "ids")
        keep = ~np.isin(self._ids, ids)
        if int((~keep).sum()) != len(np.unique(ids)):
            missing = np.setdiff1d(ids, self._ids)
            raise KeyError(f"`ids` not in the index: {missing[:10].tolist()}.")
        self._embeddings = self._embeddings[keep]
        self._ids = self._ids[keep]
        if self._labels is not None:
            self._labels = self._labels[keep]
        if not self.size:
            self._embeddings = np.zeros((0, 0), np.float32)
            self._labels = None
        self._changed()

    def search(self, queries, k):
        """Finds the `k` nearest stored embeddings of every query.

        Args:
            queries: Float array of shape `(q, d)`.
            k: Number of neighbours, `1 <= k <= size`.

        Returns:
            `(ids, distances, labels)`: int64 `(q, k)` ids, float32 `(q, k)`
            distances (similarities for a similarity, then sorted
            decreasing) and int64 `(q, k)` labels, or `None` for an
            unlabelled index. Closest first.

        Raises:
            ValueError: on an empty index, `k` outside `[1, size]`, a
                dimension mismatch or NaN/Inf queries.
        """
        if not self.size:
            raise ValueError("The index is empty: `add` embeddings before `search`.")
        queries = check_embeddings(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(
                f"`queries` have dimension {queries.shape[1]} but the index holds "
                f"dimension {self.dim}."
            )
        k = check_positive_int(k, "k")
        if k > self.size:
            raise ValueError(f"`k` must be <= the index size {self.size}; got {k}.")
        positions, distances = self._search(queries, k)
        found = positions >= 0
        safe = np.where(found, positions, 0)
        ids = np.where(found, self._ids[safe], -1)
        labels = None if self._labels is None else np.where(found, self._labels[safe], -1)
        return ids, distances, labels

    def _search(self, queries, k):
        raise NotImplementedError

    def _changed(self):
        """Hook called when the stored embeddings change."""

    def get_config(self):
        return {"distance": distances_lib.serialize(self.distance)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def save(self, path):
        """Writes the index to `path` (a numpy `.npz` archive), atomically.

        The file is written to a temporary file in the same directory, then
        renamed over `path`, so readers never see a partial file.
        """
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        header = {
            "format": _FORMAT,
            "class_name": type(self).__name__,
            "config": self.get_config(),
            "has_labels": self._labels is not None,
        }
        arrays = {
            "header": np.array(json.dumps(header)),
            "embeddings": self._embeddings,
            "ids": self._ids,
            "labels": self._labels if self._labels is not None else np.zeros(0, np.int64),
        }
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-index-", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise

    @classmethod
    def load(cls, path):
        """Reads an index written by `save`.

        Raises:
            ValueError: if the file is not an index of this class.
        """
        with np.load(os.fspath(path), allow_pickle=False) as data:
            try:
                header = json.loads(str(data["header"]))
            except KeyError:
                raise ValueError(f"{path!r} is not a tfmetric index file.") from None
            if header.get("format") != _FORMAT or header.get("class_name") != cls.__name__:
                raise ValueError(
                    f"{path!r} holds a {header.get('class_name')!r} index, not a {cls.__name__}."
                )
            index = cls.from_config(header["config"])
            if data["embeddings"].shape[0]:
                index.add(
                    data["embeddings"],
                    labels=data["labels"] if header["has_labels"] else None,
                    ids=data["ids"],
                )
        return index

    def __repr__(self):
        return f"{type(self).__name__}(size={self.size}, distance={self.distance!r})"
