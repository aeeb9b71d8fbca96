import itertools
import json
import os

import keras
import numpy as np
import pytest

import tfmetric
from tfmetric.index import ExactIndex

DISTANCES = ["euclidean", "squared_euclidean", "cosine", "inner_product", "manhattan"]


def _brute_force(gallery, queries, distance):
    g = np.asarray(gallery, np.float64)
    q = np.asarray(queries, np.float64)
    if distance in ("euclidean", "squared_euclidean"):
        d = ((q[:, None] - g[None]) ** 2).sum(-1)
        return np.sqrt(d) if distance == "euclidean" else d
    if distance == "manhattan":
        return np.abs(q[:, None] - g[None]).sum(-1)
    if distance == "cosine":
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        gn = g / np.linalg.norm(g, axis=1, keepdims=True)
        return 1 - qn @ gn.T
    return q @ g.T


@pytest.mark.parametrize("distance", DISTANCES)
def test_search_matches_brute_force(distance):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(300, 6)).astype(np.float32)
    queries = rng.normal(size=(45, 6)).astype(np.float32)
    labels = rng.integers(0, 10, 300)
    index = ExactIndex(distance, query_chunk_size=16, gallery_chunk_size=64)
    index.add(gallery[:100], labels[:100])
    index.add(gallery[100:], labels[100:])
    ids, dist, found_labels = index.search(queries, k=7)
    d = _brute_force(gallery, queries, distance)
    similarity = tfmetric.distances.get(distance).is_similarity
    order = np.argsort(-d if similarity else d, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(dist, np.take_along_axis(d, order, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(found_labels, labels[order])
    assert ids.dtype == np.int64 and dist.dtype == np.float32 and ids.shape == (45, 7)


def test_ties_go_to_the_embedding_added_first():
    index = ExactIndex(gallery_chunk_size=2)  # ties straddle gallery blocks
    index.add(np.array([[5.0], [1.0], [-1.0], [1.0], [-1.0]]), ids=[10, 11, 12, 13, 14])
    ids, dist, labels = index.search(np.array([[0.0]]), k=4)
    assert ids.tolist() == [[11, 12, 13, 14]]
    assert dist.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert labels is None


def test_k_equal_to_size_and_custom_ids():
    index = ExactIndex()
    index.add(np.array([[0.0], [3.0], [1.0]]), labels=[0, 1, 2], ids=[100, 200, 300])
    ids, dist, labels = index.search(np.array([[0.0], [3.0]]), k=3)
    assert ids.tolist() == [[100, 300, 200], [200, 300, 100]]
    assert labels.tolist() == [[0, 2, 1], [1, 2, 0]]
    np.testing.assert_allclose(dist, [[0, 1, 3], [0, 2, 3]], atol=1e-6)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    index = ExactIndex("cosine", query_chunk_size=8)
    index.add(rng.normal(size=(50, 4)), labels=rng.integers(0, 3, 50), ids=np.arange(50) * 3)
    path = tmp_path / "index.npz"
    index.save(path)
    loaded = ExactIndex.load(path)
    assert loaded.get_config() == index.get_config()
    queries = rng.normal(size=(5, 4))
    for a, b in zip(index.search(queries, 4), loaded.search(queries, 4), strict=True):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path) == ["index.npz"]  # no temporary left behind


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "index.npz"
    index = ExactIndex()
    index.add(np.zeros((3, 2)))
    index.save(path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    index.add(np.ones((2, 2)))
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["index.npz"]


def test_load_rejects_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a tfmetric index"):
        ExactIndex.load(tmp_path / "other.npz")


def test_unlabelled_empty_index_saves_and_loads(tmp_path):
    ExactIndex().save(tmp_path / "empty.npz")
    assert ExactIndex.load(tmp_path / "empty.npz").size == 0


def test_keras_serialization():
    index = ExactIndex({"class_name": "Minkowski", "config": {"p": 3}}, gallery_chunk_size=128)
    config = keras.saving.serialize_keras_object(index)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, ExactIndex)
    assert restored.get_config() == index.get_config()


@pytest.mark.parametrize(
    "action,match",
    [
        (lambda i: i.search(np.zeros((1, 2)), 1), "empty"),
        (lambda i: i.add(np.zeros(3)), "2-D"),
        (lambda i: i.add(np.full((2, 2), np.nan)), "NaN"),
        (lambda i: i.add(np.zeros((2, 2)), labels=[1]), "`labels` has 1"),
        (lambda i: i.add(np.zeros((2, 2)), ids=[1, 1]), "unique"),
    ],
)
def test_bad_input_on_empty_index(action, match):
    with pytest.raises(ValueError, match=match):
        action(ExactIndex())


@pytest.mark.parametrize(
    "action,match",
    [
        (lambda i: i.search(np.zeros((1, 3)), 1), "dimension 3"),
        (lambda i: i.search(np.zeros((1, 2)), 0), "`k` must be an integer >= 1"),
        (lambda i: i.search(np.zeros((1, 2)), 4), "`k` must be <= the index size 3"),
        (lambda i: i.search(np.array([[np.nan, 0.0]]), 1), "NaN"),
        (lambda i: i.add(np.zeros((1, 3)), labels=[0]), "dimension 3"),
        (lambda i: i.add(np.zeros((1, 2))), "holds labels"),
        (lambda i: i.add(np.zeros((1, 2)), labels=[0], ids=[0]), "unique"),
    ],
)
def test_bad_input_on_filled_index(action, match):
    index = ExactIndex()
    index.add(np.zeros((3, 2)), labels=[0, 1, 2])
    with pytest.raises(ValueError, match=match):
        action(index)


def test_constructor_validation():
    with pytest.raises(ValueError, match="`query_chunk_size`"):
        ExactIndex(query_chunk_size=0)
    with pytest.raises(ValueError, match="Unknown `distance`"):
        ExactIndex("hamming")
    assert len(ExactIndex()) == 0 and ExactIndex().dim is None


@pytest.mark.parametrize("cls", ["exact", "approximate"])
def test_remove_then_search_matches_brute_force_on_the_rest(cls):
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(60, 5)).astype(np.float32)
    queries = rng.normal(size=(4, 5)).astype(np.float32)
    if cls == "exact":
        index = ExactIndex(gallery_chunk_size=16)
    else:
        index = tfmetric.index.ApproximateIndex()
    index.add(gallery, labels=np.arange(60) % 7, ids=np.arange(100, 160))
    index.search(queries, k=2)
    removed = np.arange(100, 160, 3)
    index.remove(removed)
    kept = ~np.isin(np.arange(100, 160), removed)
    assert index.size == kept.sum()
    ids, dist, labels = index.search(queries, k=5)
    d = _brute_force(gallery[kept], queries, "euclidean")
    order = np.argsort(d, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, np.arange(100, 160)[kept][order])
    np.testing.assert_array_equal(labels, (np.arange(60) % 7)[kept][order])
    with pytest.raises(KeyError, match="not in the index"):
        index.remove([101, 999])
    assert index.size == kept.sum()
    index.remove(np.arange(100, 160)[kept])
    assert index.size == 0 and index.dim is None
    index.add(gallery[:2, :3])
    assert index.dim == 3


def _pixel_near_duplicates(n, seed=0):
    """Raw 0-255 pixel vectors (784-d); per row a copy at distance 1 and one at sqrt(2)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 784)).astype(np.float32)
    good = base.copy()
    good[np.arange(n), rng.integers(0, 784, n)] += 1
    wrong = base.copy()
    columns = np.stack([rng.permutation(784)[:2] for _ in range(n)])
    wrong[np.arange(n)[:, None], columns] += 1
    return base, np.concatenate([good, wrong])


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean"])
def test_large_norm_embeddings_rank_and_distances_are_exact(distance, tmp_path):
    # Squared norms ~1.7e7: float32 keys alone resolve squared distances to ~1, not 1 vs 2.
    queries, gallery = _pixel_near_duplicates(100)
    index = ExactIndex(distance)
    index.add(gallery, labels=np.concatenate([np.arange(100), np.arange(100) + 100]))
    ids, distances, labels = index.search(queries, 2)
    squared = ((gallery[ids].astype(np.float64) - queries[:, None, :].astype(np.float64)) ** 2)
    expected = squared.sum(-1)
    if distance == "euclidean":
        expected = np.sqrt(expected)
    np.testing.assert_array_equal(ids, np.stack([np.arange(100), np.arange(100) + 100], 1))
    np.testing.assert_array_equal(labels[:, 0], np.arange(100))
    np.testing.assert_allclose(distances, expected, rtol=1e-7)
    # A loaded index gives the same results (the offset follows the stored embeddings).
    index.save(tmp_path / "pixels.npz")
    loaded = ExactIndex.load(tmp_path / "pixels.npz")
    for got, want in zip(loaded.search(queries, 2), (ids, distances, labels), strict=True):
        np.testing.assert_array_equal(got, want)


def test_match_threshold_on_large_norm_embeddings():
    # The audit's repro: one query, near-duplicates at true distances 1, 3, 6 and 9.
    query = np.random.default_rng(0).integers(0, 256, (1, 784)).astype(np.float32)
    gallery = np.repeat(query, 4, axis=0)
    for row, (column, step) in enumerate([(10, 1), (20, 3), (30, 6), (40, 9)]):
        gallery[row, column] += step
    index = ExactIndex()
    index.add(gallery, labels=[0, 1, 1, 1])
    ids, distances, _ = index.search(query, 4)
    assert ids[0].tolist() == [0, 1, 2, 3]
    assert distances[0].tolist() == [1.0, 3.0, 6.0, 9.0]
    assert tfmetric.index.match(index, query, threshold=1.0).tolist() == [0]


def test_lookups_index_and_iterate():
    index = ExactIndex()
    index.add(np.array([[0.0], [1.0], [5.0]]), labels=[7, 8, 9])
    lookups = index.lookup(np.array([[0.9], [4.0]]), k=2)
    rows = list(itertools.islice(lookups, 5))  # bounded: it never ended before
    assert len(rows) == 2
    assert [row.ids.tolist() for row in rows] == [[[1, 0]], [[2, 1]]]
    assert lookups[-1].ids.tolist() == [[2, 1]]
    assert lookups[-2].labels.tolist() == [[8, 7]]
    for i in (2, -3):
        with pytest.raises(IndexError, match="out of range"):
            lookups[i]
    with pytest.raises(TypeError):
        lookups[True]


def test_default_ids_after_remove_continue_after_the_largest():
    index = ExactIndex()
    index.add(np.eye(3, dtype=np.float32))
    index.remove([0])
    index.add(np.ones((2, 3), np.float32))
    assert index.ids.tolist() == [1, 2, 3, 4]
    index.remove([1, 2, 3, 4])
    index.add(np.ones((1, 3), np.float32))
    assert index.ids.tolist() == [0]
    other = ExactIndex()
    other.add(np.eye(2, dtype=np.float32), ids=[10, -5])
    other.add(np.ones((1, 2), np.float32))
    assert other.ids.tolist() == [10, -5, 11]


def _mahalanobis_reference(queries, gallery, kernel):
    """`||(q - g) L||` for every pair, from the definition, in float64."""
    diff = np.asarray(queries, np.float64)[:, None] - np.asarray(gallery, np.float64)[None]
    return np.linalg.norm(diff @ np.asarray(kernel, np.float64), axis=-1)


def test_learned_distance_weights_are_saved_with_the_index(tmp_path):
    layer = tfmetric.layers.Mahalanobis()
    layer.build((None, 3))
    kernel = np.array([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0], [1.0, 0.0, 3.0]], "float32")
    layer.kernel.assign(kernel)  # "trained": far from the identity it starts as
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(12, 3)).astype("float32")
    queries = rng.normal(size=(4, 3)).astype("float32")
    index = ExactIndex(layer)
    index.add(gallery)
    index.save(tmp_path / "index.npz")
    layer.kernel.assign(np.eye(3, dtype="float32"))  # the saved file keeps the weights it had
    loaded = ExactIndex.load(tmp_path / "index.npz")
    assert loaded.distance.layer is not layer
    ids, distances, _ = loaded.search(queries, k=12)
    reference = _mahalanobis_reference(queries, gallery, kernel)
    np.testing.assert_array_equal(ids, np.argsort(reference, axis=1, kind="stable"))
    np.testing.assert_allclose(distances, np.sort(reference, axis=1), rtol=1e-5, atol=1e-5)
    assert os.listdir(tmp_path) == ["index.npz"]


def test_damaged_learned_distance_weights_are_a_clear_error(tmp_path):
    layer = tfmetric.layers.WeightedL1()
    layer.build((None, 2))
    index = ExactIndex(layer)
    index.add(np.eye(2))
    index.save(tmp_path / "index.npz")
    arrays = dict(np.load(tmp_path / "index.npz"))
    header = json.loads(str(arrays["header"]))
    header["config"]["distance"]["weights"][0]["shape"] = [5]
    arrays["header"] = np.array(json.dumps(header))
    np.savez(tmp_path / "index.npz", **arrays)
    with pytest.raises(ValueError, match="damaged tfmetric index file.*weights of `distance`"):
        ExactIndex.load(tmp_path / "index.npz")


def test_payloads_round_trip_as_their_json_values(tmp_path):
    payloads = [
        {"url": "a.png", "box": [1, 2.5, -3], "tags": {"x": None, "y": [True, False]}},
        [1, "2", [3.25, {"four": 4}]],
        "plain ünïcode ☃",
        "",
        7,
        -0.5,
        None,
        True,
        (1, 2),  # a tuple is the JSON list [1, 2]
        {3: "c"},  # an integer key is the JSON key "3"
    ]
    json_values = [json.loads(json.dumps(p)) for p in payloads]
    index = ExactIndex()
    index.add(np.arange(20.0).reshape(10, 2), payloads=payloads)
    assert index.payloads == json_values  # the same values before saving...
    index.save(tmp_path / "index.npz")
    loaded = ExactIndex.load(tmp_path / "index.npz")
    assert loaded.payloads == json_values  # ...and after loading
    assert [type(p) for p in loaded.payloads] == [type(p) for p in json_values]
    assert loaded.lookup([2.0, 3.0], k=1).payloads == [[json_values[1]]]
