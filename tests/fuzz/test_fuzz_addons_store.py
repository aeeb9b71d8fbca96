"""Fuzz: `tfmetric.addons` losses and `tfmetric.store` with bad input.

The contract: a `ValueError` / `TypeError` / `FileNotFoundError` naming the
argument or the file, or a correct value (checked against numpy references
written here from the definitions).
"""

import math
import sqlite3

import numpy as np
import pytest
from fuzz_strategies import assert_names
from hypothesis import given
from hypothesis import strategies as st

from tfmetric.addons import losses as addons
from tfmetric.store import SQLiteStore

_Y = np.array([0, 0, 1, 1])
_E = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")

_ADDONS_CASES = [
    (lambda: addons.triplet_semihard_loss(_Y.reshape(2, 2), _E), "y_true"),
    (lambda: addons.triplet_semihard_loss(_Y[:3], _E), "y_true"),
    (lambda: addons.triplet_semihard_loss(np.array(["a", "a", "b", "b"]), _E), "y_true"),
    (lambda: addons.triplet_hard_loss(_Y, np.where(np.eye(4, 3) > 0, np.nan, _E)), "y_pred"),
    (lambda: addons.triplet_hard_loss(_Y, _E, margin=math.nan), "margin"),
    (lambda: addons.TripletSemiHardLoss(distance_metric="foo"), "distance_metric"),
    (lambda: addons.contrastive_loss(np.array([0, 1, 1]), np.array([0.1, 0.2])), "y_true"),
    (lambda: addons.contrastive_loss(np.array([0, 2]), np.array([0.1, 0.2])), "y_true"),
    (lambda: addons.contrastive_loss(np.array([-1, 1]), np.array([0.1, 0.2])), "y_true"),
    (lambda: addons.ContrastiveLoss(margin=-1), "margin"),
    (lambda: addons.lifted_struct_loss(_Y, _E[None]), "embeddings"),
    (lambda: addons.npairs_loss(_Y[:3], np.zeros((4, 4))), "y_pred"),
    (lambda: addons.npairs_loss(_Y, np.zeros((4, 3))), "y_pred"),
    (lambda: addons.metric_learning.pairwise_distance(np.zeros(4)), "x"),
]


@pytest.mark.parametrize("call, named", _ADDONS_CASES)
def test_addons_bad_input_names_the_argument(call, named):
    with pytest.raises((ValueError, TypeError)) as error:
        call()
    assert_names(error.value, named)


@given(
    labels=st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    margin=st.floats(0.0, 3.0),
)
def test_contrastive_loss_matches_its_definition(labels, seed, margin):
    labels = np.array(labels)
    distances = np.random.default_rng(seed).uniform(0, 3, len(labels))
    values = np.asarray(addons.contrastive_loss(labels, distances, margin=margin))
    expected = labels * distances**2 + (1 - labels) * np.maximum(margin - distances, 0) ** 2
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    assert np.all(values >= 0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "items.db"
    store = SQLiteStore(path)
    store.upsert([1, 2, 3], _E[:3], metadata=[{"kind": "a"}, {"kind": "b"}, {"kind": "a"}])
    yield store
    store.close()


@given(content=st.sampled_from([b"x" * 3000, b"SQLite format 3\x00" + b"\x00" * 50, b"\x00"]))
def test_store_on_a_file_that_is_not_a_store_names_it(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("bad") / "items.db"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        SQLiteStore(path).close()
    assert str(path) in str(error.value), error.value


def test_store_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nodir"):
        SQLiteStore(tmp_path / "nodir" / "items.db")
    with pytest.raises(ValueError, match="folder"):
        SQLiteStore(tmp_path)
    SQLiteStore(tmp_path / "new.db").close()  # a new file in an existing folder is a new store
    with sqlite3.connect(tmp_path / "other.db") as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(ValueError, match="other.db"):
        SQLiteStore(tmp_path / "other.db")


_STORE_CASES = [
    (lambda s: s.search(_E[:1], k=0), "k"),
    (lambda s: s.search(np.zeros((1, 5)), k=1), "queries"),
    (lambda s: s.upsert([9], np.full((1, 3), np.nan)), "embeddings"),
    (lambda s: s.upsert([1, 2], _E[:3]), "embeddings"),
    (lambda s: s.upsert([5], _E[:1], metadata=[object()]), "metadata[0]"),
]


@pytest.mark.parametrize("call, named", _STORE_CASES)
def test_store_bad_input_names_the_argument_and_changes_nothing(store, call, named):
    before = len(store)
    with pytest.raises((ValueError, TypeError)) as error:
        call(store)
    assert_names(error.value, named)
    assert len(store) == before


def test_store_search_is_exact(store):
    query = _E[:1] + 0.01
    matches = store.search(query, k=3)[0]
    expected = np.argsort(np.linalg.norm(_E[:3] - query, axis=1)) + 1
    assert [m.id for m in matches] == expected.tolist()
    assert [m.id for m in store.search(query, k=3, where={"kind": "a"})[0]] == [
        i for i in expected.tolist() if i in (1, 3)
    ]
