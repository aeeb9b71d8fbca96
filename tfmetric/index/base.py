"""Storage, validation and persistence shared by the nearest-neighbour indexes."""

import json
import os

import numpy as np

from tfmetric import distances as distances_lib
from tfmetric._src import files, inputs, validation
from tfmetric.index.lookups import Lookups

_FORMAT = "tfmetric.index/1"


def _check_ids(ids, size, name="ids"):
    """Integer (int64) or string ids of shape `(size,)`."""
    ids = np.asarray(ids)
    if ids.ndim == 2 and ids.shape[1] == 1:
        ids = ids[:, 0]
    if ids.ndim != 1 or ids.shape[0] != size:
        raise ValueError(f"`{name}` must have shape ({size},); got {ids.shape}.")
    if ids.dtype.kind == "U":
        return ids
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        if size == 0:
            return ids.astype(np.int64)
        raise TypeError(f"`{name}` must hold integers or strings; got dtype {ids.dtype}.")
    return ids.astype(np.int64, copy=False)


def _check_payloads(payloads, size):
    """The JSON values of `size` JSON-serialisable payloads (`None` where absent)."""
    if isinstance(payloads, (str, bytes, dict)) or not hasattr(payloads, "__len__"):
        raise TypeError(f"`payloads` must be a sequence of {size} values; got {type(payloads)}.")
    payloads = list(payloads)
    if len(payloads) != size:
        raise ValueError(
            f"`payloads` has {len(payloads)} values but `embeddings` has {size}; they must match."
        )
    values = []
    for i, payload in enumerate(payloads):
        try:
            text = json.dumps(payload)
        except (TypeError, ValueError):
            raise TypeError(
                f"`payloads[{i}]` must be JSON-serialisable (str, number, list, dict, None); got "
                f"{type(payload).__name__}. Store a path or URL rather than the data itself."
            ) from None
        # The JSON value (tuples as lists, keys as strings), as a saved index gives it back.
        values.append(json.loads(text))
    return values


def _read_only(array):
    view = array.view()
    view.flags.writeable = False
    return view


class Index:
    """Base of the indexes: holds embeddings, labels, ids and payloads; subclasses search.

    Ids are integers or strings (one kind per index), labels integers, and
    payloads any JSON-serialisable values (a path, a URL, a dict of
    metadata). Subclasses implement `_search(queries, k)` returning
    `(positions, distances)`, positions into the stored embeddings (`-1` for a
    missing neighbour), and keep their constructor arguments in
    `get_config()`.
    """

    def __init__(self, distance="euclidean"):
        self.distance = distances_lib.get(distance)
        self._embeddings = np.zeros((0, 0), np.float32)
        self._labels = None
        self._ids = np.zeros((0,), np.int64)
        self._payloads = None
        self._changed()

    @property
    def size(self):
        """Number of stored embeddings."""
        return int(self._embeddings.shape[0])

    def __len__(self):
        return self.size

    @property
    def embeddings(self):
        """The stored float32 embeddings `(size, dim)`, in insertion order (read-only)."""
        return _read_only(self._embeddings)

    @property
    def ids(self):
        """The stored ids `(size,)`, int64 or strings (read-only)."""
        return _read_only(self._ids)

    @property
    def labels(self):
        """The stored int64 labels `(size,)` (read-only), or `None` for an unlabelled index."""
        return None if self._labels is None else _read_only(self._labels)

    @property
    def payloads(self):
        """A list of the stored payloads (`None` where absent), or `None` when none was given."""
        return None if self._payloads is None else list(self._payloads)

    @property
    def dim(self):
        """Embedding size, or `None` while the index is empty."""
        return int(self._embeddings.shape[1]) if self.size else None

    def add(self, embeddings, labels=None, ids=None, payloads=None):
        """Adds embeddings, with optional integer labels, ids and payloads.

        Adding is incremental: earlier entries are kept.

        Args:
            embeddings: Float array of shape `(n, d)`; `d` must match the
                embeddings already stored.
            labels: Integer labels of shape `(n,)`. Either every `add` gives
                labels or none does. Defaults to `None`.
            ids: Integer or string ids of shape `(n,)`, unique in the index
                and of the kind already stored. Defaults to consecutive
                integers starting after the largest stored id (at 0 for an
                empty index), so that they never collide with the ids kept
                after a `remove` (integer ids only).
            payloads: `n` JSON-serialisable values kept with the embeddings
                and returned by `lookup` (e.g. file paths or metadata dicts),
                as their JSON value (a copy, with tuples as lists and dict
                keys as strings: what `save` / `load` keep). Defaults to
                `None` (entries without payload).

        Raises:
            ValueError: for a wrong shape, a dimension mismatch, NaN/Inf
                values, mismatched lengths, duplicate ids, ids of the other
                kind, or labels given to an unlabelled index (or missing from
                a labelled one).
            TypeError: for ids that are neither integers nor strings, or
                payloads that are not JSON-serialisable.
        """
        embeddings = inputs.check_embedding_array(embeddings, "embeddings")
        n = embeddings.shape[0]
        if self.size and embeddings.shape[1] != self.dim:
            raise ValueError(
                f"`embeddings` have dimension {embeddings.shape[1]} but the index holds "
                f"dimension {self.dim}."
            )
        if labels is not None:
            labels = inputs.check_label_array(labels, "labels", n, "embeddings")
        if self.size and (labels is None) != (self._labels is None):
            have = "holds labels" if self._labels is not None else "holds no labels"
            raise ValueError(f"The index {have}: pass `labels` to every `add` or to none.")
        if ids is None:
            if self.size and self._ids.dtype.kind == "U":
                raise ValueError("The index holds string ids: pass `ids` to `add`.")
            start = int(self._ids.max()) + 1 if self.size else 0
            ids = np.arange(start, start + n, dtype=np.int64)
        else:
            ids = _check_ids(ids, n)
            if self.size and (ids.dtype.kind == "U") != (self._ids.dtype.kind == "U"):
                kind = "string" if self._ids.dtype.kind == "U" else "integer"
                raise ValueError(f"The index holds {kind} ids; `ids` must be {kind}s too.")
        if len(np.unique(ids)) != n or np.isin(ids, self._ids).any():
            raise ValueError("`ids` must be unique, and not already in the index.")
        payloads = None if payloads is None else _check_payloads(payloads, n)
        stored = [None] * self.size if self._payloads is None else self._payloads
        if payloads is not None or self._payloads is not None:
            self._payloads = stored + (payloads if payloads is not None else [None] * n)
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
            ids: Integer or string ids of shape `(n,)`, each stored in the
                index.

        Raises:
            KeyError: naming the ids that are not in the index (nothing is
                removed then).
        """
        ids = np.asarray(ids)
        ids = _check_ids(ids.reshape(-1), ids.size)
        keep = ~np.isin(self._ids, ids)
        if int((~keep).sum()) != len(np.unique(ids)):
            missing = np.setdiff1d(ids, self._ids)
            raise KeyError(f"`ids` not in the index: {missing[:10].tolist()}.")
        self._embeddings = self._embeddings[keep]
        self._ids = self._ids[keep]
        if self._labels is not None:
            self._labels = self._labels[keep]
        if self._payloads is not None:
            self._payloads = [p for p, kept in zip(self._payloads, keep, strict=True) if kept]
        if not self.size:
            self._embeddings = np.zeros((0, 0), np.float32)
            self._labels = None
            self._payloads = None
        self._changed()

    def search(self, queries, k):
        """Finds the `k` nearest stored embeddings of every query.

        Args:
            queries: Float array of shape `(q, d)`.
            k: Number of neighbours, `1 <= k <= size`.

        Returns:
            `(ids, distances, labels)`: `(q, k)` ids (int64, or strings for
            an index with string ids), float32 `(q, k)` distances
            (similarities for a similarity, then sorted decreasing) and int64
            `(q, k)` labels, or `None` for an unlabelled index. Closest
            first. A missing neighbour (approximate search) has id `-1` (`""`
            for string ids) and label `-1`.

        Raises:
            ValueError: on an empty index, `k` outside `[1, size]`, a
                dimension mismatch or NaN/Inf queries.
        """
        positions, distances = self._search_positions(queries, k)
        return self._ids_at(positions), distances, self._labels_at(positions)

    def lookup(self, queries, k=5):
        """Finds the `k` nearest neighbours of every query, with their ids, labels and payloads.

        Args:
            queries: Float array of shape `(q, d)`, or one query of shape `(d,)`
                (then the result holds one row).
            k: Number of neighbours, `1 <= k <= size`. Defaults to `5`.

        Returns:
            A `tfmetric.index.Lookups`: `ids`, `distances`, `labels` (or
            `None`) of shape `(q, k)`, closest first, and `payloads` (a
            `q × k` list of lists, or `None` when no payload was stored).
            `print(result)` shows it as a table; `result[i]` is query `i`'s
            row.

        Example:

        >>> index = tfmetric.index.ExactIndex()
        >>> index.add([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], labels=[7, 8, 9],
        ...           ids=["a", "b", "c"], payloads=["a.png", "b.png", {"url": "c"}])
        >>> print(index.lookup([0.9, 0.0], k=2))
        query  rank  id  label  distance  payload
        0      1     b   8      0.1000    b.png
        0      2     a   7      0.9000    a.png

        Raises:
            ValueError: as `search`.
        """
        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None, :]
        positions, distances = self._search_positions(queries, k)
        payloads = None
        if self._payloads is not None:
            payloads = [
                [self._payloads[p] if p >= 0 else None for p in row] for row in positions
            ]
        return Lookups(
            ids=self._ids_at(positions),
            distances=distances,
            labels=self._labels_at(positions),
            payloads=payloads,
        )

    def _search_positions(self, queries, k):
        if not self.size:
            raise ValueError("The index is empty: `add` embeddings before `search`.")
        queries = inputs.check_embedding_array(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(
                f"`queries` have dimension {queries.shape[1]} but the index holds "
                f"dimension {self.dim}."
            )
        k = validation.check_int(k, "k")
        if k > self.size:
            raise ValueError(f"`k` must be <= the index size {self.size}; got {k}.")
        return self._search(queries, k)

    def _ids_at(self, positions):
        found = positions >= 0
        missing = "" if self._ids.dtype.kind == "U" else -1
        return np.where(found, self._ids[np.where(found, positions, 0)], missing)

    def _labels_at(self, positions):
        if self._labels is None:
            return None
        found = positions >= 0
        return np.where(found, self._labels[np.where(found, positions, 0)], -1)

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
        renamed over `path`, so readers never see a partial file. It holds the
        embeddings, ids, labels, payloads and the distance, with the weights
        of a learned distance (`tfmetric.layers.Mahalanobis`, ...) as they
        are now: the loaded index has its own copy of the layer.
        """
        path = os.fspath(path)
        # A learned distance's weights are saved too: the loaded index gives the same distances.
        config = dict(
            self.get_config(), distance=distances_lib.serialize(self.distance, weights=True)
        )
        header = {
            "format": _FORMAT,
            "class_name": type(self).__name__,
            "config": config,
            "has_labels": self._labels is not None,
            "has_payloads": self._payloads is not None,
        }
        arrays = {
            "header": np.array(json.dumps(header)),
            "embeddings": self._embeddings,
            "ids": self._ids,
            "labels": self._labels if self._labels is not None else np.zeros(0, np.int64),
            "payloads": np.array([json.dumps(p) for p in self._payloads or []], dtype=str),
        }
        with files.atomic_path(path) as temporary:
            with open(temporary, "wb") as file:
                np.savez(file, **arrays)

    @classmethod
    def load(cls, path):
        """Reads an index written by `save`.

        Raises:
            FileNotFoundError: if `path` does not exist.
            ValueError: naming the file, if it is empty, truncated, corrupt,
                not an index file or an index of another class.
        """
        arrays = files.read_npz(path, "path")
        path = os.fspath(path)
        if "header" not in arrays:
            raise ValueError(f"{path!r} is not a tfmetric index file (no `header` array).")
        try:
            header = json.loads(str(arrays["header"]))
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise ValueError(f"{path!r} is not a tfmetric index file (its header is not JSON).")
        if header.get("format") != _FORMAT or header.get("class_name") != cls.__name__:
            raise ValueError(
                f"{path!r} holds a {header.get('class_name')!r} index (format "
                f"{header.get('format')!r}), not a {cls.__name__} ({_FORMAT!r})."
            )
        try:
            index = cls.from_config(header["config"])
            embeddings = arrays["embeddings"]
            if embeddings.ndim != 2:
                raise ValueError(f"`embeddings` has shape {embeddings.shape}, not (n, dim)")
            if embeddings.shape[0]:
                payloads = None
                if header.get("has_payloads"):
                    payloads = [json.loads(p) for p in arrays["payloads"].tolist()]
                index.add(
                    embeddings,
                    labels=arrays["labels"] if header["has_labels"] else None,
                    ids=arrays["ids"],
                    payloads=payloads,
                )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{path!r} is a damaged tfmetric index file: {type(error).__name__}: {error}"
            ) from None
        return index

    def __repr__(self):
        return f"{type(self).__name__}(size={self.size}, distance={self.distance!r})"
