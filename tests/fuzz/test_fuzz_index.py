"""Fuzz: `tfmetric.index` with hostile arguments and damaged files.

The contract: a `ValueError` / `TypeError` / `FileNotFoundError` naming the
argument or the file, or a correct value (neighbours checked against a float64
brute-force reference written here). Search shapes are kept fixed (every new
shape is an XLA compilation); the arguments and values vary.
"""

import math
import os

import numpy as np
import pytest
from fuzz_strategies import assert_names
from hypothesis import given
from hypothesis import strategies as st

from tfmetric.index import ApproximateIndex, ExactIndex, calibrate, evaluate_classification, match

GALLERY, DIM, QUERIES, K = 12, 4, 5, 3


def _gallery(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(GALLERY, DIM)).astype("float32"), np.arange(GALLERY) % 3


@pytest.fixture(scope="module")
def index():
    embeddings, labels = _gallery()
    index = ExactIndex()
    index.add(embeddings, labels=labels, payloads=[f"item{i}.png" for i in range(GALLERY)])
    return index


@pytest.fixture(scope="module")
def saved(index, tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "index.npz"
    index.save(path)
    return path, path.read_bytes()


def _reference(gallery, queries):
    """Euclidean distances in float64, `(q, n)`."""
    g, q = gallery.astype(np.float64), queries.astype(np.float64)
    return np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))


@given(
    seed=st.integers(0, 2**32 - 1),
    exponent=st.integers(-3, 3),
    duplicate=st.booleans(),
)
def test_search_returns_the_true_nearest_neighbours(seed, exponent, duplicate):
    rng = np.random.default_rng(seed)
    gallery = (rng.normal(size=(GALLERY, DIM)) * 10.0**exponent).astype("float32")
    if duplicate:
        gallery[5] = gallery[2]  # exact ties: both ids must come back, the first added first
    queries = (rng.normal(size=(QUERIES, DIM)) * 10.0**exponent).astype("float32")
    queries[0] = gallery[2]
    index = ExactIndex()
    index.add(gallery)
    ids, distances, labels = index.search(queries, K)
    assert labels is None
    reference = _reference(gallery, queries)
    tolerance = 1e-3 * 10.0**exponent
    for row in range(QUERIES):
        assert len(set(ids[row].tolist())) == K, ids[row]  # never an id twice
        np.testing.assert_allclose(distances[row], np.sort(reference[row])[:K], atol=tolerance)
        np.testing.assert_allclose(reference[row, ids[row]], distances[row], atol=tolerance)
    assert np.all(np.isfinite(distances))
    if duplicate:
        assert ids[0, :2].tolist() == [2, 5]


_BAD_K = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=GALLERY + 1),
    st.floats(allow_nan=True),
    st.just("3"),
    st.just(None),
    st.just(True),
)


@given(k=_BAD_K)
def test_bad_k_is_refused_naming_k(index, k):
    with pytest.raises((ValueError, TypeError)) as error:
        index.search(np.zeros((QUERIES, DIM), "float32"), k)
    assert_names(error.value, "k")


@given(
    shape=st.sampled_from([(QUERIES, DIM + 1), (QUERIES, DIM - 1), (0, DIM), (QUERIES,), (1, 1, 4)]),
    poison=st.sampled_from([None, math.nan, math.inf, -math.inf]),
)
def test_bad_queries_are_refused_naming_queries(index, shape, poison):
    queries = np.ones(shape, "float32")
    if poison is not None and queries.size:
        queries.flat[0] = poison
    elif shape in ((QUERIES,),):
        queries = np.ones((QUERIES, DIM), "float32")
        queries[1, 2] = math.nan  # a 1-D shape is a lookup's single query; poison a 2-D one
    with pytest.raises((ValueError, TypeError)) as error:
        index.search(queries, 1)
    assert_names(error.value, "queries")


@given(
    case=st.sampled_from(
        ["nan", "inf", "dim", "rank", "labels_len", "labels_float", "dup_ids", "ids_kind",
         "ids_float", "payloads_len", "payloads_object", "labels_missing"]
    )
)
def test_bad_add_is_refused_naming_the_argument(case):
    index = ExactIndex()
    index.add(np.zeros((2, DIM), "float32"), labels=[0, 1], ids=[10, 11])
    embeddings = np.ones((3, DIM), "float32")
    kwargs = {"labels": [0, 1, 2], "ids": [1, 2, 3]}
    expected = "embeddings"
    if case == "nan":
        embeddings[1, 1] = math.nan
    elif case == "inf":
        embeddings[2, 0] = -math.inf
    elif case == "dim":
        embeddings = np.ones((3, DIM + 2), "float32")
    elif case == "rank":
        embeddings = np.ones((3, DIM, 1), "float32")
    elif case == "labels_len":
        kwargs["labels"], expected = [0, 1], "labels"
    elif case == "labels_float":
        kwargs["labels"], expected = [0.5, 1, 2], "labels"
    elif case == "dup_ids":
        kwargs["ids"], expected = [1, 1, 10], "ids"
    elif case == "ids_kind":
        kwargs["ids"], expected = ["a", "b", "c"], "ids"
    elif case == "ids_float":
        kwargs["ids"], expected = [0.5, 1.5, 2.5], "ids"
    elif case == "payloads_len":
        kwargs["payloads"], expected = ["a"], "payloads"
    elif case == "payloads_object":
        kwargs["payloads"], expected = [object(), None, None], "payloads[0]"
    elif case == "labels_missing":
        kwargs.pop("labels")
        expected = "labels"
    with pytest.raises((ValueError, TypeError)) as error:
        index.add(embeddings, **kwargs)
    assert_names(error.value, expected)
    assert index.size == 2  # nothing half-added


def _damaged(original, how, position, byte):
    data = bytearray(original)
    if how == "truncate":
        return bytes(data[: position % len(data)])
    if how == "flip":
        data[position % len(data)] ^= byte or 1
        return bytes(data)
    if how == "garbage":
        return bytes([byte]) * (position % 4096)
    return b"\x93NUMPY" + bytes(data[position % len(data) :])  # an .npy magic, not an archive


@given(
    how=st.sampled_from(["truncate", "flip", "garbage", "npy"]),
    position=st.integers(0, 2**20),
    byte=st.integers(0, 255),
)
def test_damaged_index_file_raises_naming_the_file_or_loads_unchanged(
    index, saved, tmp_path_factory, how, position, byte
):
    _, original = saved
    path = tmp_path_factory.mktemp("damaged") / "index.npz"
    path.write_bytes(_damaged(original, how, position, byte))
    try:
        loaded = ExactIndex.load(path)
    except ValueError as error:
        assert str(path) in str(error), error
        return
    # A flipped byte the archive does not check (a timestamp, padding): the same index.
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    np.testing.assert_array_equal(loaded.labels, index.labels)
    assert loaded.payloads == index.payloads


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04", b"\x80\x04K\x01.", b"garbage" * 100])
def test_empty_truncated_pickle_or_garbage_file_names_the_file(tmp_path, content):
    path = tmp_path / "index.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        ExactIndex.load(path)
    assert str(path) in str(error.value)
    for name in ("BadZipFile", "allow_pickle", "EOFError", "KeyError"):
        assert name not in str(error.value)


def test_missing_directory_and_foreign_npz_name_the_file(tmp_path, index):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ExactIndex.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="directory"):
        ExactIndex.load(tmp_path)
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    with pytest.raises(ValueError, match="other.npz.*not a tfmetric index"):
        ExactIndex.load(tmp_path / "other.npz")
    np.savez(tmp_path / "objects.npz", header=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="objects.npz.*pickled"):
        ExactIndex.load(tmp_path / "objects.npz")
    index.save(tmp_path / "exact.npz")
    with pytest.raises(ValueError, match="exact.npz.*not a ApproximateIndex"):
        ApproximateIndex.load(tmp_path / "exact.npz")


def test_index_file_with_inconsistent_arrays_names_the_file(tmp_path, index):
    index.save(tmp_path / "index.npz")
    with np.load(tmp_path / "index.npz") as data:
        arrays = dict(data)
    arrays["labels"] = arrays["labels"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="bad.npz.*damaged.*labels"):
        ExactIndex.load(tmp_path / "bad.npz")


def test_save_leaves_no_temporary_and_round_trips(tmp_path, index):
    index.save(tmp_path / "index.npz")
    index.save(tmp_path / "index.npz")
    assert os.listdir(tmp_path) == ["index.npz"]
    loaded = ExactIndex.load(tmp_path / "index.npz")
    assert loaded.payloads == index.payloads
    with pytest.raises(FileNotFoundError):
        index.save(tmp_path / "missing" / "index.npz")


@given(
    threshold=st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, "x", None]),
                        st.floats(0.0, 10.0)),
    unknown=st.sampled_from([-1, 99, 1.5, "u"]),
)
def test_match_threshold_and_unknown(index, threshold, unknown):
    queries = index.embeddings[:4] + 0.01
    valid_threshold = isinstance(threshold, float) and math.isfinite(threshold)
    valid_unknown = isinstance(unknown, int)
    if not (valid_threshold and valid_unknown):
        with pytest.raises((ValueError, TypeError)) as error:
            match(index, queries, threshold, unknown=unknown)
        assert_names(error.value, "threshold" if not valid_threshold else "unknown")
        return
    result = match(index, queries, threshold, unknown=unknown)
    distances = _reference(index.embeddings, queries).min(axis=1)
    expected = np.where(distances <= threshold, index.labels[:4], unknown)
    near = np.abs(distances - threshold) < 1e-5  # float32 rounding at the cut
    np.testing.assert_array_equal(result[~near], expected[~near])


@given(
    targets=st.one_of(
        st.just({}),
        st.just({"accuracy": 0.5}),
        st.dictionaries(
            st.sampled_from(["precision", "recall", "f1"]),
            st.one_of(st.floats(allow_nan=True), st.just("optimal"), st.just("best")),
            min_size=1,
        ),
    )
)
def test_calibrate_targets_are_checked(index, targets):
    queries = index.embeddings + 0.05
    labels = index.labels.copy()
    labels[::4] = 7  # some queries of a class the index lacks
    try:
        calibration = calibrate(index, queries, labels, targets)
    except ValueError as error:
        assert "targets" in str(error) or "No threshold reaches" in str(error), error
        return
    for metric, threshold in calibration.thresholds.items():
        assert math.isfinite(threshold)
        assert set(calibration.values[metric]) == {"precision", "recall", "f1"}
        target = targets[metric]
        if target != "optimal":
            assert calibration.values[metric][metric] >= target


def test_calibration_and_evaluation_reject_bad_labels(index):
    queries = index.embeddings[:4]
    with pytest.raises(ValueError) as error:
        calibrate(index, queries, [0, 1])
    assert_names(error.value, "labels")
    with pytest.raises(ValueError) as error:
        evaluate_classification(index, queries, [0, 1, 2, 3], threshold=math.nan)
    assert_names(error.value, "threshold")
    unlabelled = ExactIndex()
    unlabelled.add(queries)
    with pytest.raises(ValueError, match="labels"):
        calibrate(unlabelled, queries, [0, 1, 2, 3])


@given(
    kwargs=st.sampled_from(
        [{"nlist": 0}, {"nlist": -3}, {"nprobe": 0}, {"nlist": 2.5}, {"seed": "x"},
         {"distance": "no-such-distance"}, {"query_chunk_size": 0}]
    )
)
def test_constructor_arguments_are_checked(kwargs):
    name = next(iter(kwargs))
    cls = ExactIndex if name == "query_chunk_size" else ApproximateIndex
    with pytest.raises((ValueError, TypeError)) as error:
        cls(**kwargs)
    assert name in str(error.value) or "no-such-distance" in str(error.value), error.value
