"""Writes batches of 50 items into a store forever, printing each committed batch number.

Usage: store_writer.py sqlite PATH | store_writer.py redis PORT NAMESPACE
"""

import sys

import numpy as np

from tfmetric.store import RedisStore, SQLiteStore


def batch(i):
    rng = np.random.default_rng(i)
    ids = [f"item-{i}-{j}" for j in range(50)]
    return ids, rng.normal(size=(50, 8)).astype(np.float32), [{"batch": i}] * 50


if __name__ == "__main__":
    if sys.argv[1] == "sqlite":
        store = SQLiteStore(sys.argv[2])
    else:
        store = RedisStore(port=int(sys.argv[2]), namespace=sys.argv[3])
    i = 0
    while True:
        store.upsert(*batch(i))
        print(i, flush=True)
        i += 1
