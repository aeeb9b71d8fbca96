"""Item stores (SQLite, Redis): CRUD, search against brute force, crash safety, bad input."""

import itertools
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from redis_server import RedisServer, free_port
from store_writer import batch

from tfmetric.index import ApproximateIndex, ExactIndex
from tfmetric.store import RedisStore, SQLiteStore

ROOT = pathlib.Path(__file__).resolve().parents[2]
_NAMES = itertools.count()


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path):
    """A function opening (and reopening) one fresh store of the backend."""
    opened = []
    namespace = f"test{next(_NAMES)}"

    def open_(**kwargs):
        if request.param == "sqlite":
            store = SQLiteStore(tmp_path / "items.db", **kwargs)
        else:
            server = request.getfixturevalue("redis_server")
            store = RedisStore(port=server.port, namespace=namespace, **kwargs)
        opened.append(store)
        return store

    open_.backend = request.param
    yield open_
    for store in opened:
        store.close()


def _brute(gallery, queries):
    return np.sqrt(((queries[:, None, :] - gallery[None]) ** 2).sum(-1))


def test_crud_and_ids_of_both_kinds(open_store):
    store = open_store(model_version="v1")
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.add([1, "1", "a", 7], vectors, metadata=[{"n": 1}, {"n": "one"}, None, [1, 2]])
    assert len(store) == 4 and store.dim == 3
    item = store.get("1")
    assert item.id == "1" and item.metadata == {"n": "one"} and item.model_version == "v1"
    np.testing.assert_array_equal(item.embedding, vectors[1])
    assert store.get(1).metadata == {"n": 1} and 1 in store and 2 not in store
    with pytest.raises(ValueError, match=r"already in the store: \['a'\].*upsert"):
        store.add(["b", "a"], np.zeros((2, 3)))
    assert "b" not in store and len(store) == 4  # nothing written
    store.upsert(["a", "b"], [[9.0, 9.0, 9.0], [0.0, 0.0, 0.0]], metadata=[{"x": 1}, None])
    assert len(store) == 5 and store.get("a").metadata == {"x": 1}
    np.testing.assert_array_equal(store.get("a").embedding, [9.0, 9.0, 9.0])
    store.delete([7, "b"])
    assert len(store) == 3 and 7 not in store
    with pytest.raises(KeyError, match="Unknown item id 7"):
        store.get(7)
    with pytest.raises(KeyError, match=r"Unknown item ids: \['zz'\]"):
        store.delete(["a", "zz"])
    assert "a" in store  # nothing deleted
    reopened = open_store()
    assert len(reopened) == 3 and reopened.get("a").metadata == {"x": 1}
    assert reopened.model_version == "v1"


def test_search_matches_brute_force_after_writes(open_store):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(120, 6)).astype(np.float32)
    store = open_store()
    ids = [f"i{j}" for j in range(120)]
    colours = [{"colour": ["red", "blue", "green"][j % 3]} for j in range(120)]
    store.add(ids[:80], vectors[:80], metadata=colours[:80])
    store.add(ids[80:], vectors[80:], metadata=colours[80:])
    vectors[:10] = rng.normal(size=(10, 6))
    store.upsert(ids[:10], vectors[:10], metadata=colours[:10])
    store.delete(ids[100:110])
    alive = np.r_[0:100, 110:120]
    queries = rng.normal(size=(3, 6)).astype(np.float32)
    d = _brute(vectors[alive], queries)
    for store_ in (store, open_store()):
        results = store_.search(queries, k=5)
        for row, matches in zip(d, results, strict=True):
            order = np.argsort(row, kind="stable")[:5]
            assert [m.id for m in matches] == [ids[j] for j in alive[order]]
            np.testing.assert_allclose([m.distance for m in matches], row[order], rtol=1e-4)
        blue = [j for j in alive if colours[j]["colour"] == "blue"]
        filtered = store_.search(queries[0], k=4, where={"colour": "blue"})[0]
        row = _brute(vectors[blue], queries[:1])[0]
        assert [m.id for m in filtered] == [ids[blue[j]] for j in np.argsort(row)[:4]]
        assert all(m.metadata == {"colour": "blue"} for m in filtered)
        similar = store_.similar("i3", k=3)
        row = _brute(vectors[alive], vectors[3:4])[0]
        expected = [ids[j] for j in alive[np.argsort(row, kind="stable")] if j != 3][:3]
        assert [m.id for m in similar] == expected
    assert store.search(queries[0], k=3, where={"colour": "pink"}) == [[]]
    assert len(store.search(queries[0], k=500)[0]) == len(alive)


def test_index_is_kept_in_step_without_reloading(open_store, monkeypatch):
    store = open_store()
    store.add(["a"], [[0.0, 0.0]])
    monkeypatch.setattr(type(store), "_load", lambda self: pytest.fail("reloaded"))
    store.add(["b", "c"], [[1.0, 0.0], [3.0, 0.0]])
    store.upsert(["a"], [[2.9, 0.0]])
    store.delete(["c"])
    assert [m.id for m in store.search([[3.0, 0.0]], k=2)[0]] == ["a", "b"]


def test_faiss_index_backend_matches_brute_force(open_store):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 4)).astype(np.float32)
    store = open_store(index=ApproximateIndex("euclidean"))
    store.add(list(range(50)), vectors)
    store.delete([0, 1])
    matches = store.search(vectors[5], k=3)[0]
    row = _brute(vectors[2:], vectors[5:6])[0]
    assert [m.id for m in matches] == (np.argsort(row)[:3] + 2).tolist()
    with pytest.raises(ValueError, match="distance"):
        open_store(index=ExactIndex("cosine"))


def test_bad_input_is_explained(open_store):
    store = open_store(model_version="v2")
    store.add(["a"], [[0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="size 2 but the store holds size 3"):
        store.add(["b"], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="`model_version` 'v1' differs"):
        store.upsert(["b"], [[0.0, 1.0, 2.0]], model_version="v1")
    with pytest.raises(ValueError, match="NaN"):
        store.add(["b"], [[np.nan, 1.0, 2.0]])
    with pytest.raises(TypeError, match="ints or strings"):
        store.add([1.5], [[0.0, 1.0, 2.0]])
    with pytest.raises(TypeError, match="JSON"):
        store.add(["b"], [[0.0, 1.0, 2.0]], metadata=[{"x": object()}])
    with pytest.raises(ValueError, match="duplicates"):
        store.add(["b", "b"], np.zeros((2, 3)))
    with pytest.raises(TypeError, match="sequence"):
        store.delete("a")
    with pytest.raises(ValueError, match="size 2 but the store holds size 3"):
        store.search([[0.0, 1.0]])
    with pytest.raises(ValueError, match="model version 'v2'"):
        open_store(model_version="v1")
    assert len(store) == 1


def test_sqlite_path_that_is_not_a_store(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database at all" * 10)
    with pytest.raises(ValueError, match="not a tfmetric store"):
        SQLiteStore(text)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(ValueError, match="SQLite database but not a tfmetric store"):
        SQLiteStore(other)
    with pytest.raises(ValueError, match="folder"):
        SQLiteStore(tmp_path)


def test_redis_namespace_that_is_not_a_store(redis_server):
    import redis

    client = redis.Redis(port=redis_server.port)
    client.set("stranger:header", "{not json")
    client.hset("alien:ids", "x", 1)
    with pytest.raises(ValueError, match="not a tfmetric.store/1 store"):
        RedisStore(port=redis_server.port, namespace="stranger")
    with pytest.raises(ValueError, match="no tfmetric store header"):
        RedisStore(port=redis_server.port, namespace="alien")
    client.close()


def test_redis_unreachable_is_a_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(ConnectionError, match=r"Cannot reach the Redis server at 127.0.0.1:\d+"):
        RedisStore(port=free_port(), timeout=2)
    server = RedisServer(tmp_path)
    try:
        store = RedisStore(port=server.port, namespace="s", timeout=2)
        store.add(["kept"], [[1.0, 2.0]])
        server.kill()  # the server dies; the acknowledged write is in its fsynced log
        with pytest.raises(ConnectionError, match="Redis server"):
            store.add(["lost"], [[3.0, 4.0]])
        assert len(store) == 1
        server.start()
        reopened = RedisStore(port=server.port, namespace="s")
        assert len(reopened) == 1 and "kept" in reopened and "lost" not in reopened
        reopened.close()
        store.close()
    finally:
        server.stop()


def test_killed_writer_loses_nothing_committed(open_store, tmp_path):
    store = open_store()  # creates the store
    if open_store.backend == "sqlite":
        args = ["sqlite", str(store.path)]
    else:
        args = ["redis", str(store.address.split(":")[1].split("/")[0]), store.namespace]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    writer = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "store_writer.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    committed = -1
    deadline = time.monotonic() + 120
    try:
        while committed < 5 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                pytest.fail(f"writer died: {writer.stderr.read()[-2000:]}")
            committed = int(line)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    reopened = open_store()
    count = len(reopened)
    assert count % 50 == 0 and count >= (committed + 1) * 50  # whole batches only
    for i in range(count // 50):
        ids, vectors, metadata = batch(i)
        for item_id, vector in zip(ids[::7], vectors[::7], strict=True):
            item = reopened.get(item_id)
            np.testing.assert_array_equal(item.embedding, vector)
            assert item.metadata == metadata[0]
    if open_store.backend == "sqlite":
        with sqlite3.connect(store.path) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert json.loads(json.dumps(reopened.dim)) == 8


def test_learned_distance_store_reopens_with_its_weights(open_store):
    import tfmetric

    layer = tfmetric.layers.Mahalanobis()
    layer.build((None, 3))
    kernel = np.array([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0], [1.0, 0.0, 3.0]], "float32")
    layer.kernel.assign(kernel)
    rng = np.random.default_rng(5)
    gallery = rng.normal(size=(9, 3)).astype("float32")
    query = rng.normal(size=(3,)).astype("float32")
    reference = np.linalg.norm((query - gallery).astype(np.float64) @ kernel, axis=1)
    order = np.argsort(reference, kind="stable")
    store = open_store(index=ExactIndex(layer))
    store.add(list(range(9)), gallery)
    store.close()
    for reopened in (open_store(), open_store(index=ExactIndex(layer))):
        matches = reopened.search(query, k=9)[0]
        assert [m.id for m in matches] == order.tolist()
        np.testing.assert_allclose([m.distance for m in matches], reference[order], rtol=1e-5)
        reopened.close()
    other = tfmetric.layers.Mahalanobis()  # the identity: not the store's distance
    other.build((None, 3))
    with pytest.raises(ValueError, match="store's distance is LearnedDistance.*differs"):
        open_store(index=ExactIndex(other))


def _filled_sqlite(path):
    with SQLiteStore(path) as store:
        metadata = [{"i": i} for i in range(60)]
        store.add(list(range(60)), np.arange(240.0).reshape(60, 4), metadata=metadata)
    return path


def _overwrite_pages(path):
    data = bytearray(path.read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, len(data), np.uint8).tobytes()
    data[4096:] = noise[4096:]  # every page but the first (the schema): the tables' rows
    path.write_bytes(bytes(data))


def _sql(statement):
    def damage(path):
        with sqlite3.connect(path) as connection:
            connection.execute(statement)
        connection.close()

    return damage


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_overwrite_pages, "SQLite says database disk image is malformed"),
        (_sql("DROP TABLE items"), "its `items` table is missing"),
        (_sql("ALTER TABLE items DROP COLUMN model_version"), "no such column: model_version"),
        (_sql("DELETE FROM tfmetric_store"), "`tfmetric_store` table has no header row"),
        (_sql("UPDATE tfmetric_store SET value = '{\"format\": '"), "its header is not JSON"),
        (
            _sql("""UPDATE tfmetric_store SET value = '{"format": "tfmetric.store/1", "dim": 4,
                    "model_version": "v1"}'"""),
            "its header has no `distance`",
        ),
        (
            _sql("UPDATE items SET metadata = '{oops' WHERE key = 3"),
            "item record 3: its metadata is not JSON",
        ),
        (
            _sql("UPDATE items SET embedding = x'0102' WHERE key = 7"),
            "item record 7: its embedding has 2 bytes, not 4",
        ),
    ],
)
def test_damaged_sqlite_store_is_a_clear_error(tmp_path, damage, problem):
    path = _filled_sqlite(tmp_path / "items.db")
    damage(path)
    with pytest.raises(ValueError) as caught:
        with SQLiteStore(path) as store:
            store.search(np.zeros(4), k=60)
    message = str(caught.value)
    assert f"The item store at `path` {str(path)!r} is damaged" in message
    assert problem in message


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda c, ns: c.delete(f"{ns}:item:5"), "item record '{ns}:item:5' is missing"),
        (
            lambda c, ns: c.hset(f"{ns}:item:5", "metadata", "{x"),
            "item record '{ns}:item:5': its metadata is not JSON",
        ),
        (
            lambda c, ns: c.hset(f"{ns}:item:5", "embedding", b"abc"),
            "item record '{ns}:item:5': its embedding has 3 bytes, not 4",
        ),
        (
            lambda c, ns: c.hdel(f"{ns}:item:5", "model_version"),
            "item record '{ns}:item:5' has no model_version",
        ),
        (
            lambda c, ns: c.hset(f"{ns}:ids", '"x"', "nan"),
            "the hash '{ns}:ids' holds a key that is not an integer",
        ),
        (lambda c, ns: c.delete(f"{ns}:next"), "its key '{ns}:next' is missing"),
        (
            lambda c, ns: c.set(f"{ns}:header", '{"format": "tfmetric.store/1", "dim": 4}'),
            "its header's `model_version` is None, not a string",
        ),
        (lambda c, ns: c.delete(f"{ns}:ids") and c.set(f"{ns}:ids", "x"), "another Redis type"),
    ],
)
def test_damaged_redis_store_is_a_clear_error(redis_server, damage, problem):
    import redis

    namespace = f"damaged{next(_NAMES)}"
    with RedisStore(port=redis_server.port, namespace=namespace) as store:
        metadata = [{"i": i} for i in range(20)]
        store.add(list(range(20)), np.arange(80.0).reshape(20, 4), metadata=metadata)
    client = redis.Redis(port=redis_server.port)
    damage(client, namespace)
    client.close()
    with pytest.raises(ValueError) as caught:
        with RedisStore(port=redis_server.port, namespace=namespace) as store:
            store.search(np.zeros(4), k=20)
    message = str(caught.value)
    where = f"namespace {namespace!r} on 127.0.0.1:{redis_server.port}/0"
    assert f"The item store in {where} is damaged" in message
    assert problem.format(ns=namespace) in message
