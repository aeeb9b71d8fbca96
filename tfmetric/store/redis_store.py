"""An item store on a Redis server (the `redis` client, extra `store-redis`)."""

import json

import numpy as np

from tfmetric.store.item_store import (
    FORMAT,
    ItemStore,
    damaged,
    decode_embeddings,
    decode_item,
)

_BATCH = 1000


def _import_redis():
    try:
        import redis
    except ImportError:
        raise ImportError(
            "RedisStore needs the redis client: `pip install tfmetric[redis]` (or `pip install "
            "redis`)."
        ) from None
    return redis


class RedisStore(ItemStore):
    """An item store on a Redis server.

    Items live under the keys `<namespace>:...` of one Redis database: a JSON
    header, a hash from item id to integer key, a key counter, and one hash
    per item (id, float32 embedding bytes, JSON metadata, model version).
    Every `add`, `upsert` and `delete` is one `MULTI`/`EXEC` transaction
    (watching the id hash), so it is applied entirely or not at all — a
    client killed or a connection lost mid-write leaves nothing
    half-written; durability across a server crash is the server's (run it
    with `appendonly yes` and `appendfsync always` to lose no acknowledged
    write). The search index is built in memory when the store opens and
    then kept in step with each write. One process writes a store at a time
    (a concurrent write is detected and refused).

    Args:
        host: Server address. Defaults to `"127.0.0.1"`.
        port: Server port. Defaults to `6379`.
        db: Database number. Defaults to `0`.
        namespace: Prefix of the store's keys; several stores can share a
            database under different namespaces. Defaults to `"tfmetric"`.
        model_version: See `tfmetric.store.ItemStore`. Defaults to `None`.
        index: See `tfmetric.store.ItemStore`. Defaults to `None`.
        timeout: Seconds to wait for the server (connection and replies).
            Defaults to `10`.

    Raises:
        ConnectionError: if the server cannot be reached (at opening, or
            during a write, which is then not applied).
        ValueError: if the namespace holds keys that are not a tfmetric
            store, a damaged store (a missing key, a key of another type, an
            unreadable header or item record: then when it is read, naming
            the key), or for a model version / distance other than the
            store's.
    """

    def __init__(
        self,
        host="127.0.0.1",
        port=6379,
        db=0,
        namespace="tfmetric",
        model_version=None,
        index=None,
        timeout=10.0,
    ):
        redis = _import_redis()
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"`namespace` must be a non-empty string; got {namespace!r}.")
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._watch_error = redis.exceptions.WatchError
        self._response_error = redis.exceptions.ResponseError
        self.address = f"{host}:{port}/{db}"
        self.namespace = namespace
        self.location = f"in namespace {namespace!r} on {self.address}"
        self._client = redis.Redis(
            host=host, port=port, db=db, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._call(self._client.ping)
        super().__init__(model_version=model_version, index=index)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self._errors as error:
            raise ConnectionError(
                f"Cannot reach the Redis server at {self.address}: {error}. Start it "
                "(`redis-server`) or pass the right `host` / `port`; nothing was written."
            ) from None
        except self._response_error as error:
            if "WRONGTYPE" not in str(error):
                raise
            problem = f"one of its keys holds another Redis type ({error})"
            raise damaged(self.location, problem) from None

    def _key(self, *parts):
        return ":".join((self.namespace, *map(str, parts)))

    def _read_header(self):
        raw = self._call(self._client.get, self._key("header"))
        if raw is None:
            if self._call(self._client.exists, self._key("ids"), self._key("next")):
                raise ValueError(
                    f"Namespace {self.namespace!r} on {self.address} holds keys but no tfmetric "
                    "store header."
                )
            return None
        try:
            header = json.loads(raw)
        except ValueError as error:
            raise ValueError(
                f"Namespace {self.namespace!r} on {self.address} is not a {FORMAT} store, or a "
                f"damaged one: its key {self._key('header')!r} is not JSON ({error})."
            ) from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(
                f"Namespace {self.namespace!r} on {self.address} is not a {FORMAT} store."
            )
        if header.get("dim") is not None and not self._call(self._client.exists, self._key("next")):
            raise damaged(self.location, f"its key {self._key('next')!r} is missing")
        return header

    def _write_header(self, header):
        self._call(self._client.set, self._key("header"), json.dumps(header))

    def _load(self):
        ids = self._call(self._client.hgetall, self._key("ids"))
        try:
            keys = np.array(sorted(int(k) for k in ids.values()), np.int64)
        except ValueError as error:
            problem = f"the hash {self._key('ids')!r} holds a key that is not an integer ({error})"
            raise damaged(self.location, problem) from None
        if not len(keys):
            return keys, None
        blobs = []
        for begin in range(0, len(keys), _BATCH):
            pipe = self._client.pipeline(transaction=False)
            for key in keys[begin : begin + _BATCH]:
                pipe.hget(self._key("item", key), "embedding")
            blobs.extend(self._call(pipe.execute))
        records = [repr(self._key("item", key)) for key in keys]
        for record, blob in zip(records, blobs, strict=True):
            if blob is None:
                raise damaged(self.location, f"item record {record} is missing")
        return keys, decode_embeddings(self.location, records, blobs, self._header["dim"])

    def _keys_of(self, encoded):
        keys = []
        for begin in range(0, len(encoded), _BATCH):
            part = encoded[begin : begin + _BATCH]
            keys.extend(self._call(self._client.hmget, self._key("ids"), part))
        return [None if key is None else int(key) for key in keys]

    def _transact(self, existing_of, stage):
        """Runs `stage(pipe)` in MULTI/EXEC while the id hash is unchanged."""
        with self._client.pipeline() as pipe:
            try:
                pipe.watch(self._key("ids"))
                if existing_of is not None:
                    encoded, existing = existing_of
                    now = [
                        None if k is None else int(k)
                        for k in pipe.hmget(self._key("ids"), encoded)
                    ]
                    if now != existing:
                        raise RuntimeError("The store was changed by another writer; retry.")
                result = stage(pipe)
                pipe.execute()
                return result
            except self._errors as error:
                raise ConnectionError(
                    f"Lost the Redis server at {self.address}: {error}. The write was not applied."
                ) from None
            except self._watch_error:
                raise RuntimeError(
                    "The store was changed by another writer during this write (not applied); "
                    "retry."
                ) from None

    def _commit(self, encoded, embeddings, texts, existing, header):
        version = self.model_version
        new = sum(key is None for key in existing)

        def stage(pipe):
            last = pipe.incrby(self._key("next"), new) if new else 0
            next_key = last - new + 1
            pipe.multi()
            keys = []
            for item_id, vector, text, key in zip(encoded, embeddings, texts, existing, strict=True):
                if key is None:
                    key, next_key = next_key, next_key + 1
                    pipe.hset(self._key("ids"), item_id, key)
                pipe.hset(
                    self._key("item", key),
                    mapping={
                        "id": item_id,
                        "embedding": np.ascontiguousarray(vector, np.float32).tobytes(),
                        "metadata": text,
                        "model_version": version,
                    },
                )
                keys.append(key)
            if header is not None:
                pipe.set(self._key("header"), json.dumps(header))
            return keys

        return self._transact((encoded, existing), stage)

    def _delete(self, encoded, keys):
        def stage(pipe):
            pipe.multi()
            pipe.hdel(self._key("ids"), *encoded)
            pipe.delete(*[self._key("item", key) for key in keys])

        self._transact((encoded, keys), stage)

    def _fetch(self, keys, embeddings=True):
        items = []
        field = "embedding" if embeddings else "model_version"
        for begin in range(0, len(keys), _BATCH):
            pipe = self._client.pipeline(transaction=False)
            for key in keys[begin : begin + _BATCH]:
                pipe.hmget(self._key("item", key), "id", field, "metadata", "model_version")
            part = keys[begin : begin + _BATCH]
            for key, (item_id, blob, text, version) in zip(
                part, self._call(pipe.execute), strict=True
            ):
                record = repr(self._key("item", key))
                if embeddings and blob is None:
                    raise damaged(self.location, f"item record {record} is missing")
                items.append(
                    decode_item(
                        self.location,
                        record,
                        item_id,
                        blob if embeddings else None,
                        text,
                        version,
                        self._header["dim"],
                    )
                )
        return items

    def close(self):
        self._client.close()
