"""Item stores: a persistent catalogue (ids, embeddings, metadata) with nearest-neighbour search.

`SQLiteStore` keeps the catalogue in one file (no server); `RedisStore` on a
Redis server (needs the `redis` client, extra `redis`). Both search through a
`tfmetric.index` index kept in step with every write.
"""

from tfmetric.store.item_store import Item, ItemStore, Match
from tfmetric.store.redis_store import RedisStore
from tfmetric.store.sqlite_store import SQLiteStore

__all__ = ["Item", "ItemStore", "Match", "RedisStore", "SQLiteStore"]
