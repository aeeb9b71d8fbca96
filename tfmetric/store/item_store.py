"""The item store: a persistent catalogue of embedded items searched through an index.

A backend (`SQLiteStore`, `RedisStore`) persists the items; the search runs on
an in-memory `tfmetric.index` index (exact by default) that the store builds
once when it opens and then keeps in step with every write (`LiveIndex`:
recent writes are searched beside the index and merged into it in batches).
"""

import json
from typing import Any, NamedTuple

import numpy as np

from tfmetric import distances as distances_lib
from tfmetric._src import inputs, validation
from tfmetric.index import ExactIndex, Index
from tfmetric.store.live_index import LiveIndex

FORMAT = "tfmetric.store/1"


class Item(NamedTuple):
    """One stored item.

    Attributes:
        id: The item id (an int or a str).
        embedding: float32 array of shape `(dim,)`.
        metadata: The JSON metadata (a dict, list, str, number or `None`).
        model_version: The version of the model that embedded it.
    """

    id: Any
    embedding: np.ndarray
    metadata: Any
    model_version: str


class Match(NamedTuple):
    """One search result: the item id, its distance to the query, its metadata."""

    id: Any
    distance: float
    metadata: Any


def encode_id(item_id):
    """The stored text of an item id (ints and strings stay distinct)."""
    if isinstance(item_id, (bool, np.bool_)) or not isinstance(item_id, (int, np.integer, str)):
        raise TypeError(f"Item ids must be ints or strings; got {item_id!r}.")
    return json.dumps(int(item_id) if isinstance(item_id, np.integer) else item_id)


def decode_id(text):
    return json.loads(text)


def damaged(location, problem):
    """The `ValueError` of a damaged store: where it is (`location`) and what is wrong."""
    return ValueError(f"The item store {location} is damaged: {problem}.")


def check_header(header, location):
    """Checks a store header's fields; returns its distance.

    Raises:
        ValueError: naming `location` and the field that is missing or wrong.
    """
    dim = header.get("dim")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise damaged(location, f"its header's `dim` is {dim!r}, not a positive integer or null")
    if not isinstance(header.get("model_version"), str):
        version = header.get("model_version")
        raise damaged(location, f"its header's `model_version` is {version!r}, not a string")
    if "distance" not in header:
        raise damaged(location, "its header has no `distance`")
    try:
        return distances_lib.get(header["distance"])
    except ValueError as error:
        raise damaged(location, f"its header's `distance` cannot be read ({error})") from None


def decode_item(location, key, item_id, embedding, metadata, model_version, dim):
    """An `Item` from its stored fields (`embedding` bytes, or `None` when not read).

    Raises:
        ValueError: naming `location` and the item's key, for a missing or
            unreadable field.
    """
    fields = {"id": item_id, "metadata": metadata, "model_version": model_version}
    missing = [name for name, value in fields.items() if value is None]
    if missing:
        raise damaged(location, f"item record {key} has no {', '.join(missing)}")
    try:
        item_id = decode_id(item_id)
        if isinstance(item_id, bool) or not isinstance(item_id, (int, str)):
            raise ValueError(f"{item_id!r} is not an int or a string")
    except ValueError as error:
        raise damaged(location, f"item record {key}: its id is unreadable ({error})") from None
    try:
        metadata = json.loads(metadata)
    except ValueError as error:
        raise damaged(location, f"item record {key}: its metadata is not JSON ({error})") from None
    if isinstance(model_version, bytes):
        model_version = model_version.decode("utf-8", "replace")
    if embedding is not None:
        embedding = decode_embedding(location, key, embedding, dim).copy()
    return Item(item_id, embedding, metadata, model_version)


def decode_embeddings(location, keys, blobs, dim):
    """The float32 embeddings `(n, dim)` of the stored bytes of the records `keys`."""
    for key, blob in zip(keys, blobs, strict=True):
        decode_embedding(location, key, blob, dim)
    return np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), dim)


def decode_embedding(location, key, blob, dim):
    """The float32 embedding `(dim,)` of stored bytes (read-only view)."""
    if blob is None:
        raise damaged(location, f"item record {key} has no embedding")
    if dim is None or len(blob) != 4 * dim:
        raise damaged(
            location, f"item record {key}: its embedding has {len(blob)} bytes, not {dim} float32s"
        )
    return np.frombuffer(blob, np.float32)


def encode_metadata(metadata, position):
    try:
        return json.dumps(metadata, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"`metadata[{position}]` must be JSON-serialisable (dicts, lists, strings, finite "
            f"numbers, booleans, None); {error}."
        ) from None


class ItemStore:
    """Base of the item stores: validation, the in-memory index and search.

    Subclasses persist items. Each holds a header (`dim`, `model_version`,
    `distance`) and, per item, its id, embedding, JSON metadata and model
    version, with an integer `key` (never reused) that ids the item in the
    index. Subclasses set `location` (where the store is, for messages) and
    implement `_read_header`, `_write_header`, `_load`, `_keys_of`,
    `_commit`, `_delete`, `_fetch` (with or without the embeddings) and
    `close`; `_commit` and `_delete` apply every write of one call
    atomically. A damaged store (a header or an item record that is missing
    or unreadable) raises a `ValueError` naming `location` and the record.

    Args:
        model_version: The version of the model whose embeddings the store
            holds; must match the store's when it exists. Defaults to `None`
            (the store's, or `"unversioned"` for a new store).
        index: An empty `tfmetric.index` index (e.g.
            `tfmetric.index.ApproximateIndex("cosine")`) that sets the
            distance; must match the store's distance when it exists.
            Defaults to `None`: an `ExactIndex` with the store's distance
            (euclidean for a new store). A new store records a learned
            distance's weights as they are when it is created, and reopens
            with them (or takes an index whose learned distance has the same
            weights).
    """

    def __init__(self, model_version=None, index=None):
        if model_version is not None and not isinstance(model_version, str):
            raise TypeError(f"`model_version` must be a string; got {model_version!r}.")
        if index is not None and not isinstance(index, Index):
            raise TypeError(f"`index` must be a tfmetric.index index; got {index!r}.")
        if index is not None and index.size:
            raise ValueError("`index` must be empty; the store fills it from its items.")
        header = self._read_header()
        if header is None:
            distance = index.distance if index is not None else distances_lib.get("euclidean")
            header = {
                "format": FORMAT,
                "dim": None,
                "model_version": model_version or "unversioned",
                # With a learned distance's weights, so that the store reopens with them.
                "distance": distances_lib.serialize(distance, weights=True),
            }
            self._write_header(header)
        if model_version is not None and model_version != header["model_version"]:
            raise ValueError(
                f"The store holds embeddings of model version {header['model_version']!r}; got "
                f"`model_version` {model_version!r}. Re-embed into a new store."
            )
        distance = check_header(header, self.location)
        if index is not None and not index.distance.same_values(distance):
            raise ValueError(
                f"The store's distance is {distance!r} (with the weights it recorded, for a "
                f"learned distance); `index` uses {index.distance!r}, which differs."
            )
        self._header = header
        self._index = LiveIndex(index if index is not None else ExactIndex(distance))
        keys, embeddings = self._load()
        if len(keys):
            self._index.load(keys, embeddings)

    @property
    def dim(self):
        """Embedding size, or `None` before the first item."""
        return self._header["dim"]

    @property
    def model_version(self):
        return self._header["model_version"]

    @property
    def distance(self):
        return self._index.distance

    def __len__(self):
        return len(self._index)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_items(self, ids, embeddings, metadata, model_version):
        if isinstance(ids, (str, int, np.integer)):
            raise TypeError("`ids` must be a sequence of ids; wrap a single id in a list.")
        ids = list(ids)
        encoded = [encode_id(i) for i in ids]
        if len(set(encoded)) != len(encoded):
            raise ValueError("`ids` holds duplicates.")
        embeddings = inputs.check_embedding_array(embeddings, "embeddings")
        if embeddings.shape[0] != len(ids):
            raise ValueError(
                f"`embeddings` has {embeddings.shape[0]} rows but `ids` has {len(ids)} ids."
            )
        dim = self._header["dim"]
        if dim is not None and embeddings.shape[1] != dim:
            raise ValueError(
                f"`embeddings` have size {embeddings.shape[1]} but the store holds size {dim}."
            )
        if model_version is not None and model_version != self.model_version:
            raise ValueError(
                f"`model_version` {model_version!r} differs from the store's "
                f"{self.model_version!r}: embeddings of different models are not comparable."
            )
        if metadata is None:
            metadata = [None] * len(ids)
        metadata = list(metadata)
        if len(metadata) != len(ids):
            raise ValueError(f"`metadata` has {len(metadata)} entries but `ids` has {len(ids)}.")
        texts = [encode_metadata(m, i) for i, m in enumerate(metadata)]
        return encoded, embeddings, texts

    def add(self, ids, embeddings, metadata=None, model_version=None):
        """Adds new items; an id already in the store is an error.

        Args:
            ids: Item ids (ints or strings), unique.
            embeddings: Float array `(n, dim)`.
            metadata: One JSON value per item (e.g. a dict), or `None`.
                Defaults to `None`.
            model_version: The version of the model that embedded them; must
                be the store's. Defaults to `None` (the store's).

        Raises:
            ValueError: for ids already stored (nothing is written), a wrong
                embedding size, NaN/Inf, or another model version.
            TypeError: for ids that are not ints or strings, or metadata that
                is not JSON.
        """
        self._write(ids, embeddings, metadata, model_version, replace=False)

    def upsert(self, ids, embeddings, metadata=None, model_version=None):
        """Adds items, replacing (embedding and metadata) those already stored.

        Same arguments and errors as `add`, except that stored ids are fine.
        """
        self._write(ids, embeddings, metadata, model_version, replace=True)

    def _write(self, ids, embeddings, metadata, model_version, replace):
        encoded, embeddings, texts = self._check_items(ids, embeddings, metadata, model_version)
        existing = self._keys_of(encoded)
        if not replace:
            taken = [decode_id(e) for e, key in zip(encoded, existing, strict=True) if key is not None]
            if taken:
                raise ValueError(
                    f"Item ids already in the store: {taken[:10]}; use `upsert` to replace them."
                )
        header = None
        if self._header["dim"] is None:
            header = dict(self._header, dim=int(embeddings.shape[1]))
        keys = self._commit(encoded, embeddings, texts, existing, header)
        if header is not None:
            self._header = header
        self._index.put(keys, embeddings)

    def delete(self, ids):
        """Deletes items.

        Raises:
            KeyError: naming the ids that are not stored (nothing is deleted).
        """
        if isinstance(ids, (str, int, np.integer)):
            raise TypeError("`ids` must be a sequence of ids; wrap a single id in a list.")
        encoded = [encode_id(i) for i in ids]
        keys = self._keys_of(encoded)
        missing = [decode_id(e) for e, key in zip(encoded, keys, strict=True) if key is None]
        if missing:
            raise KeyError(f"Unknown item ids: {missing[:10]}.")
        self._delete(encoded, keys)
        self._index.remove(set(keys))

    def get(self, item_id):
        """The stored `Item` with this id.

        Raises:
            KeyError: for an unknown id.
        """
        (key,) = self._keys_of([encode_id(item_id)])
        if key is None:
            raise KeyError(f"Unknown item id {item_id!r}.")
        return self._fetch([key])[0]

    def __contains__(self, item_id):
        return self._keys_of([encode_id(item_id)])[0] is not None

    def search(self, queries, k=10, where=None):
        """The `k` stored items nearest to each query vector.

        Args:
            queries: Float array `(q, dim)` (or one vector `(dim,)`).
            k: Number of results per query, `>= 1`; fewer come back when the
                store (or the filter) holds fewer items. Defaults to `10`.
            where: Optional metadata filter, a dict `{field: value}`: only
                items whose metadata (a dict) has every `field` equal to its
                `value` are returned. Defaults to `None`.

        Returns:
            One list of `Match(id, distance, metadata)` per query, closest
            first (largest similarity first for a similarity).
        """
        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None]
        queries = inputs.check_embedding_array(queries, "queries")
        if self.dim is not None and queries.shape[1] != self.dim:
            raise ValueError(
                f"`queries` have size {queries.shape[1]} but the store holds size {self.dim}."
            )
        return [self._search_one(q, k, where, exclude=None) for q in queries]

    def similar(self, item_id, k=10, where=None):
        """The `k` items most like a stored item ("more like item X"), itself excluded.

        Same `k` and `where` as `search`; returns one list of `Match`.

        Raises:
            KeyError: for an unknown id.
        """
        (key,) = self._keys_of([encode_id(item_id)])
        if key is None:
            raise KeyError(f"Unknown item id {item_id!r}.")
        query = self._fetch([key])[0].embedding
        return self._search_one(query, k, where, exclude=key)

    def _search_one(self, query, k, where, exclude):
        k = validation.check_int(k, "k")
        if where is not None and not isinstance(where, dict):
            raise TypeError(f"`where` must be a dict of metadata fields; got {where!r}.")
        size = len(self._index)
        wanted = k + (exclude is not None)
        depth = min(size, wanted if where is None else max(4 * wanted, 64))
        while depth:
            keys, distances = self._index.search(query, depth)
            if exclude is not None:
                distances, keys = distances[keys != exclude], keys[keys != exclude]
            items = self._fetch(keys.tolist(), embeddings=False)
            matches = [
                Match(item.id, float(d), item.metadata)
                for item, d in zip(items, distances, strict=True)
                if where is None or _matches(item.metadata, where)
            ]
            if len(matches) >= k or depth == size:
                return matches[:k]
            depth = min(size, 4 * depth)
        return []

    def close(self):
        """Releases the connection; the store cannot be used afterwards."""


def _matches(metadata, where):
    return isinstance(metadata, dict) and all(
        field in metadata and metadata[field] == value for field, value in where.items()
    )
