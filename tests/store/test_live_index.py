"""LiveIndex: pending writes searched beside the index, merged in batches, equal to brute force."""

import numpy as np
import pytest

from tfmetric import distances
from tfmetric.index import ApproximateIndex, ExactIndex
from tfmetric.store import live_index
from tfmetric.store.live_index import LiveIndex


@pytest.mark.parametrize("pending", [3, 1000])
@pytest.mark.parametrize("make", [lambda: ExactIndex("cosine", gallery_chunk_size=16),
                                  lambda: ApproximateIndex("inner_product")])
def test_random_writes_match_brute_force(pending, make, monkeypatch):
    monkeypatch.setattr(live_index, "_MIN_PENDING", pending)
    rng = np.random.default_rng(0)
    live = LiveIndex(make())
    alive = {}
    initial = rng.normal(size=(30, 5)).astype(np.float32)
    live.load(np.arange(30), initial)
    alive.update(enumerate(initial))
    merges = 0
    for _ in range(30):
        op = rng.integers(3)
        if op == 0 or not alive:
            keys = rng.integers(0, 60, 2)
            keys = np.unique(keys)
            vectors = rng.normal(size=(len(keys), 5)).astype(np.float32)
            live.put(keys, vectors)
            alive.update(zip(keys.tolist(), vectors, strict=True))
        elif op == 1:
            key = rng.choice(sorted(alive))
            live.remove([key])
            del alive[key]
        merges += not live._pending and not live._dead
        query = rng.normal(size=5).astype(np.float32)
        assert len(live) == len(alive)
        depth = min(7, len(alive))
        keys, found = live.search(query, depth)
        stored = sorted(alive)
        vectors = np.stack([alive[k] for k in stored])
        brute = np.asarray(live.distance(query[None], vectors))[0]
        order = np.argsort(-brute if live.distance.is_similarity else brute, kind="stable")[:depth]
        np.testing.assert_allclose(found, brute[order], rtol=1e-5, atol=1e-5)
        assert keys.tolist() == [stored[i] for i in order]
    if pending == 3:
        assert merges > 3  # the pending writes were merged many times
    assert live.distance == distances.get(make().distance)
