"""Benchmark of the item stores (SQLite, Redis) beside the in-memory ExactIndex alone.

For each backend, in one process: upsert `--size` items (D = `--dim`, string
ids, small JSON metadata) in batches of 1000 (items/s); reopen the store
(rebuilds the in-memory index from the database); single-item upserts of
existing items (items/s, each its own durable transaction); query latency
(median / p95 ms of one vector query, k = 10) on the static store, by item id
("more like X"), with a metadata filter matching 10% of the items, and right
after a single-item upsert (the index re-pads its gallery blocks once after a
change). "in-memory index" runs the same vector queries on an `ExactIndex`
holding the same embeddings, with no store around it.

Durability as configured: SQLite in WAL mode with `synchronous=FULL`; Redis
started by this script on 127.0.0.1 with `appendonly yes`, `appendfsync
always` (every acknowledged write is on disk), in a temporary folder.

Usage:
    python benchmarks/store.py                 # 100k items, D = 64
    python benchmarks/store.py --size 10000
    python benchmarks/store.py --write         # also update benchmarks/RESULTS.md
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _results  # noqa: E402  (benchmarks/_results.py, beside this script)

SECTION = "## Item store"
QUERIES = 200


def _start_redis(folder):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", folder,
         "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def _latency(fn, count):
    times = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    times = np.array(times) * 1000
    return float(np.median(times)), float(np.percentile(times, 95))


def _data(size, dim):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(size, dim)).astype(np.float32)
    ids = [f"item-{i}" for i in range(size)]
    metadata = [{"category": f"c{i % 10}", "price": i % 97} for i in range(size)]
    queries = rng.normal(size=(QUERIES, dim)).astype(np.float32)
    return embeddings, ids, metadata, queries


def run_store(open_store, size, dim):
    embeddings, ids, metadata, queries = _data(size, dim)
    row = {}
    store = open_store()
    start = time.perf_counter()
    for begin in range(0, size, 1000):
        store.upsert(ids[begin : begin + 1000], embeddings[begin : begin + 1000],
                     metadata[begin : begin + 1000])
    row["batch upsert items/s"] = size / (time.perf_counter() - start)
    store.close()
    start = time.perf_counter()
    store = open_store()
    row["open s"] = time.perf_counter() - start
    assert len(store) == size
    store.search(queries[0], k=10)  # compiles the search
    singles = 200
    start = time.perf_counter()
    for i in range(singles):
        store.upsert([ids[i]], embeddings[i : i + 1] + 1e-3, [metadata[i]])
    row["single upsert items/s"] = singles / (time.perf_counter() - start)
    store.search(queries[0], k=10)
    row["query ms"] = _latency(lambda i: store.search(queries[i], k=10), QUERIES)
    row["by id ms"] = _latency(lambda i: store.similar(ids[i * 7], k=10), QUERIES)
    row["filtered ms"] = _latency(
        lambda i: store.search(queries[i], k=10, where={"category": "c3"}), QUERIES
    )
    store.similar(ids[0], k=10, where={"category": "c3"})

    def upsert_then_query(i):
        store.upsert([ids[i]], embeddings[i : i + 1], [metadata[i]])
        store.search(queries[i], k=10)

    row["upsert+query ms"] = _latency(upsert_then_query, 50)
    store.close()
    return row


def run_index(size, dim):
    from tfmetric.index import ExactIndex

    embeddings, _, _, queries = _data(size, dim)
    index = ExactIndex()
    start = time.perf_counter()
    index.add(embeddings)
    row = {"batch upsert items/s": size / (time.perf_counter() - start)}
    index.search(queries[:1], k=10)
    row["query ms"] = _latency(lambda i: index.search(queries[i : i + 1], k=10), QUERIES)
    return row


def _fmt(value):
    if isinstance(value, tuple):
        return f"{value[0]:.2f} / {value[1]:.2f}"
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tfmetric.store import RedisStore, SQLiteStore

    load_before = os.getloadavg()
    rows = {"in-memory index (ExactIndex)": run_index(args.size, args.dim)}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "items.db")
        rows["SQLiteStore"] = run_store(lambda: SQLiteStore(path), args.size, args.dim)
        process, port = _start_redis(folder)
        try:
            rows["RedisStore"] = run_store(lambda: RedisStore(port=port), args.size, args.dim)
        finally:
            process.terminate()
            process.wait()
    load_after = os.getloadavg()
    import tensorflow as tf

    columns = ["batch upsert items/s", "open s", "single upsert items/s", "query ms", "by id ms",
               "filtered ms", "upsert+query ms"]
    lines = [
        SECTION,
        "",
        "`python benchmarks/store.py`: an item store of "
        f"{args.size:,} items (D = {args.dim}, string ids, JSON metadata) on each backend, beside the "
        "in-memory `ExactIndex` alone. Batch upserts of 1000 items; single upserts are one durable "
        "transaction each (SQLite WAL + `synchronous=FULL`; Redis `appendfsync always`); latencies are "
        f"median / p95 ms over {QUERIES} single-vector queries, k = 10 (`filtered`: metadata filter "
        "matching 10% of the items; `upsert+query`: one single upsert then one query, 50 times).",
        "",
        f"Machine: {_results.cpu_name()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}, CPU; load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after the run (a shared machine: other "
        "jobs were running, so compare rows of the same run rather than absolute figures).",
        "",
        "| backend | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        _results.replace_section(SECTION, table)


if __name__ == "__main__":
    main()
