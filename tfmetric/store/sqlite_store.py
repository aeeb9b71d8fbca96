"""An item store in one SQLite file (Python's standard library; no server)."""

import contextlib
import json
import os
import sqlite3

import numpy as np

from tfmetric.store.item_store import (
    FORMAT,
    ItemStore,
    damaged,
    decode_embeddings,
    decode_item,
)

_SCHEMA = """
CREATE TABLE tfmetric_store (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE,
    embedding BLOB NOT NULL,
    metadata TEXT NOT NULL,
    model_version TEXT NOT NULL
);
"""
# SQLite's default limit of host parameters per statement is 999 on old builds.
_CHUNK = 900


class SQLiteStore(ItemStore):
    """An item store in a SQLite database file: embedded, no server.

    Every `add`, `upsert` and `delete` is one SQLite transaction in
    write-ahead-log mode with full synchronisation: once it returns, the
    write survives a crash of the process (or of the machine), and a write
    interrupted by a crash leaves no trace. The search index is built in
    memory when the store opens and then kept in step with each write.
    One process writes a store at a time.

    Args:
        path: The database file; created when missing.
        model_version: See `tfmetric.store.ItemStore`. Defaults to `None`.
        index: See `tfmetric.store.ItemStore`. Defaults to `None`.

    Raises:
        ValueError: if `path` is a file that is not a tfmetric store (another
            SQLite database, or not a database at all), a damaged store (a
            malformed file, a missing table or column, an unreadable header
            or item record: then when it is read, naming `path` and the
            record), or for a model version / distance other than the
            store's.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "catalogue.db")
    >>> with tfmetric.store.SQLiteStore(path, model_version="v1") as store:
    ...     store.add(["shoe", "boot", "hat"], [[0.0, 1.0], [0.1, 0.9], [5.0, 5.0]],
    ...               metadata=[{"kind": "foot"}, {"kind": "foot"}, {"kind": "head"}])
    ...     [m.id for m in store.similar("shoe", k=2)]
    ['boot', 'hat']
    >>> store = tfmetric.store.SQLiteStore(path)
    >>> store.search([[5.0, 4.0]], k=1, where={"kind": "foot"})[0][0].id
    'boot'
    >>> store.close()
    """

    def __init__(self, path, model_version=None, index=None):
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(f"`path` {path!r} is a folder, not a store file.")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"`path` {path!r}: the folder {folder!r} does not exist.")
        if os.path.isfile(path) and os.path.getsize(path):
            with open(path, "rb") as handle:
                header = handle.read(16)
            if header != b"SQLite format 3\x00":
                # SQLite would take a short foreign file for an empty database and overwrite it.
                raise ValueError(f"`path` {path!r} is not a tfmetric store: not a SQLite database.")
        self.path = path
        self.location = f"at `path` {path!r}"
        try:
            self._connection = sqlite3.connect(path, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as error:
            raise ValueError(f"`path` {path!r} is not a tfmetric store: {error}.") from None
        try:
            super().__init__(model_version=model_version, index=index)
        except BaseException:
            self._connection.close()
            raise

    def _read_header(self):
        try:
            tables = {
                row[0]
                for row in self._connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
        except sqlite3.DatabaseError as error:
            raise ValueError(f"`path` {self.path!r} is not a tfmetric store: {error}.") from None
        if not tables:
            return None
        if "tfmetric_store" in tables and "items" not in tables:
            raise damaged(self.location, "its `items` table is missing")
        if not {"tfmetric_store", "items"} <= tables:
            raise ValueError(
                f"`path` {self.path!r} is a SQLite database but not a tfmetric store "
                f"(tables {sorted(tables)})."
            )
        with self._reading():
            row = self._connection.execute(
                "SELECT value FROM tfmetric_store WHERE name = 'header'"
            ).fetchone()
        if row is None:
            raise damaged(self.location, "the `tfmetric_store` table has no header row")
        try:
            header = json.loads(row[0])
        except ValueError as error:
            raise damaged(self.location, f"its header is not JSON ({error})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"`path` {self.path!r} is not a {FORMAT} store.")
        return header

    @contextlib.contextmanager
    def _reading(self):
        """Reports a malformed database file, or a missing table or column, as damage."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            malformed = type(error) is sqlite3.DatabaseError
            missing = isinstance(error, sqlite3.OperationalError) and "no such" in str(error)
            if not (malformed or missing):
                raise
            raise damaged(self.location, f"SQLite says {error}") from None

    def _write_header(self, header):
        with self._transaction() as cursor:
            if not cursor.execute("SELECT 1 FROM sqlite_master WHERE name = 'items'").fetchone():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cursor.execute(statement)
            cursor.execute(
                "INSERT OR REPLACE INTO tfmetric_store VALUES ('header', ?)", (json.dumps(header),)
            )

    def _transaction(self):
        return _Transaction(self._connection)

    def _load(self):
        with self._reading():
            rows = self._connection.execute(
                "SELECT key, embedding FROM items ORDER BY key"
            ).fetchall()
        keys = np.array([row[0] for row in rows], np.int64)
        if not rows:
            return keys, None
        blobs = [row[1] for row in rows]
        return keys, decode_embeddings(self.location, keys.tolist(), blobs, self._header["dim"])

    def _keys_of(self, encoded):
        found = {}
        for begin in range(0, len(encoded), _CHUNK):
            part = encoded[begin : begin + _CHUNK]
            marks = ",".join("?" * len(part))
            with self._reading():
                found.update(
                    self._connection.execute(
                        f"SELECT item_id, key FROM items WHERE item_id IN ({marks})", part
                    ).fetchall()
                )
        return [found.get(e) for e in encoded]

    def _commit(self, encoded, embeddings, texts, existing, header):
        version = self.model_version
        with self._reading(), self._transaction() as cursor:
            row = cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
            next_key = (row[0] if row else 0) + 1
            keys, new_rows, updates = [], [], []
            for item_id, vector, text, key in zip(encoded, embeddings, texts, existing, strict=True):
                blob = np.ascontiguousarray(vector, np.float32).tobytes()
                if key is None:
                    key, next_key = next_key, next_key + 1
                    new_rows.append((key, item_id, blob, text, version))
                else:
                    updates.append((blob, text, version, key))
                keys.append(key)
            cursor.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", new_rows)
            cursor.executemany(
                "UPDATE items SET embedding = ?, metadata = ?, model_version = ? WHERE key = ?",
                updates,
            )
            if header is not None:
                cursor.execute(
                    "UPDATE tfmetric_store SET value = ? WHERE name = 'header'",
                    (json.dumps(header),),
                )
        return keys

    def _delete(self, encoded, keys):
        with self._reading(), self._transaction() as cursor:
            cursor.executemany("DELETE FROM items WHERE key = ?", [(k,) for k in keys])

    def _fetch(self, keys, embeddings=True):
        rows = {}
        column = "embedding" if embeddings else "NULL"
        for begin in range(0, len(keys), _CHUNK):
            part = keys[begin : begin + _CHUNK]
            marks = ",".join("?" * len(part))
            with self._reading():
                found = self._connection.execute(
                    f"SELECT key, item_id, {column}, metadata, model_version FROM items "
                    f"WHERE key IN ({marks})",
                    part,
                ).fetchall()
            for key, item_id, blob, metadata, version in found:
                if embeddings and blob is None:
                    raise damaged(self.location, f"item record {key} has no embedding")
                rows[key] = decode_item(
                    self.location, key, item_id, blob, metadata, version, self._header["dim"]
                )
        return [rows[k] for k in keys]

    def close(self):
        self._connection.close()


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any error."""

    def __init__(self, connection):
        self._connection = connection

    def __enter__(self):
        self._cursor = self._connection.cursor()
        self._cursor.execute("BEGIN IMMEDIATE")
        return self._cursor

    def __exit__(self, error_type, *exc):
        if error_type is None:
            self._cursor.execute("COMMIT")
        else:
            self._cursor.execute("ROLLBACK")
        return False
