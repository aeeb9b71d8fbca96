import numpy as np
import pytest

from tfmetric.index import ApproximateIndex, ExactIndex

faiss = pytest.importorskip("faiss")


def _clusters(n, d=16, centers=50, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, d)) * 4
    return (means[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine", "inner_product"])
def test_small_index_is_exhaustive_and_matches_exact(distance):
    x = _clusters(500)
    q = _clusters(20, seed=1)
    labels = np.arange(500) % 5
    exact, approx = ExactIndex(distance), ApproximateIndex(distance)
    exact.add(x, labels)
    approx.add(x, labels)
    e_ids, e_dist, e_labels = exact.search(q, 5)
    a_ids, a_dist, a_labels = approx.search(q, 5)
    np.testing.assert_array_equal(a_ids, e_ids)
    np.testing.assert_array_equal(a_labels, e_labels)
    np.testing.assert_allclose(a_dist, e_dist, rtol=1e-3, atol=1e-3)


def test_ivf_recall_against_exact():
    x = _clusters(20000)
    q = _clusters(200, seed=2)
    exact, approx = ExactIndex(), ApproximateIndex(nprobe=32)
    exact.add(x)
    approx.add(x)
    e_ids, _, _ = exact.search(q, 10)
    a_ids, a_dist, _ = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(a_ids, e_ids, strict=True)])
    assert recall > 0.9
    assert np.all(np.diff(a_dist, axis=1) >= 0)


def test_missing_neighbours_are_padded():
    x = _clusters(5000)
    index = ApproximateIndex(nlist=100, nprobe=1)
    index.add(x, labels=np.zeros(5000, np.int64))
    ids, dist, labels = index.search(x[:20], k=400)  # ~50 embeddings per probed cell
    missing = ids == -1
    assert missing.any()
    assert np.all(np.isinf(dist[missing])) and np.all(labels[missing] == -1)


def test_save_load_and_rebuild(tmp_path):
    x = _clusters(5000)
    index = ApproximateIndex("cosine", nprobe=4)
    index.add(x)
    index.save(tmp_path / "ann.npz")
    loaded = ApproximateIndex.load(tmp_path / "ann.npz")
    assert loaded.get_config() == index.get_config()
    a = index.search(x[:10], 5)
    b = loaded.search(x[:10], 5)
    np.testing.assert_array_equal(a[0], b[0])


def test_unsupported_distance():
    with pytest.raises(ValueError, match="ExactIndex for other distances"):
        ApproximateIndex("manhattan")
