"""The library on the active Keras backend (CI runs this file under TensorFlow and JAX).

Written with numpy and `keras` only (no TensorFlow ops in the test code), so
that `KERAS_BACKEND=jax python -m pytest tests/test_backends.py` checks the
library itself under JAX: distances, in-batch losses (values against the numpy
references, XLA training steps), the exact index and the retrieval metrics.
"""

import os

import keras
import numpy as np
import pytest
from references import pairwise, triplet

import tfmetric

IN_BATCH = [
    "TripletLoss",
    "ContrastiveLoss",
    "CircleLoss",
    "MultiSimilarityLoss",
    "LiftedStructureLoss",
    "NPairsLoss",
    "NTXentLoss",
    "SoftNearestNeighborLoss",
    "SupervisedContrastiveLoss",
]


def test_runs_on_the_backend_the_environment_names():
    assert keras.backend.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")


@pytest.mark.parametrize("name", ["euclidean", "squared_euclidean", "cosine", "manhattan"])
def test_distances_match_the_definitions(name):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 4)).astype("float32"), rng.normal(size=(3, 4)).astype("float32")
    got = keras.ops.convert_to_numpy(tfmetric.distances.get(name)(x, y))
    np.testing.assert_allclose(got, pairwise(x, y, name), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mining", ["semi-hard", "hard"])
def test_triplet_loss_matches_the_reference(mining):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 3)).astype("float32")
    y = np.repeat(np.arange(4), 3)
    loss = tfmetric.losses.TripletLoss(margin=0.5, mining=mining)
    got = float(keras.ops.convert_to_numpy(loss(y, x)))
    np.testing.assert_allclose(got, triplet(y, x, margin=0.5, mining=mining), rtol=1e-5)


@pytest.mark.parametrize("name", IN_BATCH)
def test_in_batch_loss_trains_under_xla(name):
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 4).astype("int32")
    x = (rng.normal(size=(16, 6)) + 2.0 * np.eye(6)[y % 6]).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    before = [w.copy() for w in model.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=getattr(tfmetric.losses, name)(),
                  jit_compile=True)  # fmt: skip
    losses = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_exact_index_and_retrieval_metrics():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 4)).astype("float32")
    y = rng.integers(0, 3, 30)
    index = tfmetric.index.ExactIndex()
    index.add(x, labels=y)
    ids, distances, _ = index.search(x[:5], k=3)
    reference = pairwise(x[:5], x, "euclidean")
    np.testing.assert_array_equal(ids, np.argsort(reference, axis=1, kind="stable")[:, :3])
    # float32 matrix-product distances: ~1e-3 absolute at zero distance.
    np.testing.assert_allclose(distances, np.sort(reference, axis=1)[:, :3], rtol=1e-5, atol=2e-3)
    # Leave-one-out P@1 by brute force.
    d = pairwise(x, x, "euclidean")
    np.fill_diagonal(d, np.inf)
    expected = np.mean(y[np.argmin(d, axis=1)] == y)
    scores = tfmetric.metrics.evaluate_retrieval(x, y, metrics=["precision_at_1", "map_at_r"])
    np.testing.assert_allclose(scores["precision_at_1"], expected)


def test_export_needs_the_tensorflow_backend_and_says_so_first(tmp_path, monkeypatch):
    if keras.backend.backend() == "tensorflow":
        # Another backend as seen by the export's check (torch is not needed for that).
        monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    query = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    candidate = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    model = tfmetric.models.TwoTowerModel(query, candidate)
    # Candidates of the wrong width: embedding them would fail with another error.
    bad_candidates = np.ones((4, 7), "float32")
    calls = {
        "TwoTowerModel.export_towers": lambda: model.export_towers(
            tmp_path / "q", tmp_path / "c", candidates=bad_candidates
        ),
        "save_embedder": lambda: tfmetric.export.save_embedder(tmp_path / "e", query),
        "export_for_serving": lambda: tfmetric.export.export_for_serving(query, tmp_path / "s"),
        "plan_export": lambda: tfmetric.export.plan_export(query),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=f"{name}` needs the TensorFlow Keras backend.*"
                           "KERAS_BACKEND=tensorflow"):
            call()
    assert os.listdir(tmp_path) == []  # nothing written, not even a parent directory
