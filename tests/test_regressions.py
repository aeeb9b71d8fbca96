"""Regression tests of latent bugs: compiled-function caches, file modes, label checks."""

import os
import stat

import keras
import numpy as np
import pytest

import tfmetric


def _mahalanobis(matrix):
    """A Mahalanobis layer (always the same config) with the given weight."""
    layer = tfmetric.layers.Mahalanobis(name="metric")
    layer.build((None, matrix.shape[0]))
    layer.set_weights([matrix.astype("float32")])
    return layer


def _numpy_mahalanobis(x, y, matrix):
    tx, ty = x @ matrix, y @ matrix
    return np.sqrt(((tx[:, None] - ty[None]) ** 2).sum(-1))


def test_index_does_not_share_compiled_search_between_learned_distances():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(20, 3)).astype("float32")
    queries = rng.normal(size=(4, 3)).astype("float32")
    results = []
    for scale in (np.diag([1.0, 1.0, 1.0]), np.diag([10.0, 0.1, 1.0])):
        keras.backend.clear_session()  # the second layer gets the same name and config
        layer = _mahalanobis(scale)
        index = tfmetric.index.ExactIndex(distance=layer)
        index.add(gallery)
        _, distances, _ = index.search(queries, k=3)
        expected = np.sort(_numpy_mahalanobis(queries, gallery, scale), axis=1)[:, :3]
        np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)
        results.append(distances)
    assert not np.allclose(results[0], results[1])


def test_metrics_do_not_share_compiled_ranking_between_learned_distances():
    # Two classes separated along the first axis only: the first metric sees them
    # apart, the second (which shrinks that axis) mixes them up.
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 10)
    x = np.stack([labels * 4.0, rng.normal(size=20) * 3.0], axis=1).astype("float32")
    scores = []
    for matrix in (np.diag([1.0, 0.01]), np.diag([0.01, 1.0])):
        keras.backend.clear_session()
        layer = _mahalanobis(matrix)
        scores.append(tfmetric.metrics.precision_at_1(x, labels, distance=layer))
    assert scores[0] == 1.0
    d = _numpy_mahalanobis(x, x, np.diag([0.01, 1.0]))
    np.fill_diagonal(d, np.inf)
    expected = np.mean(labels[np.argmin(d, axis=1)] == labels)
    assert scores[1] == pytest.approx(expected)
    assert scores[1] < 1.0


def test_compiled_function_cache_is_bounded():
    from tfmetric._src.cache import FunctionCache

    cache = FunctionCache(maxsize=3)
    for p in range(1, 10):
        cache.get((tfmetric.distances.Minkowski(p=p), 1), lambda p=p: p)
    assert len(cache) == 3
    built = []
    assert cache.get((tfmetric.distances.Minkowski(p=9), 1), lambda: built.append(1)) == 9
    assert built == []  # the most recent entries are kept


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_index_file_gets_umask_mode(tmp_path, umask_022):
    index = tfmetric.index.ExactIndex()
    index.add(np.eye(3, dtype="float32"), labels=[0, 1, 2])
    index.save(tmp_path / "index.npz")
    assert _mode(tmp_path / "index.npz") == 0o644
    assert os.listdir(tmp_path) == ["index.npz"]


def test_trainer_outputs_get_umask_mode(tmp_path, umask_022):
    from trainers import outputs

    outputs.write_json(tmp_path / "report.json", {"a": 1})
    outputs.write_text(tmp_path / "table.txt", "x\n")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with outputs.atomic_path(tmp_path / "model.keras") as tmp:
        model.save(tmp)
    for name in ("report.json", "table.txt", "model.keras"):
        assert _mode(tmp_path / name) == 0o644, name
    assert sorted(os.listdir(tmp_path)) == ["model.keras", "report.json", "table.txt"]


def test_parity_report_gets_umask_mode(tmp_path, umask_022):
    tfmetric.export.parity.write_report({"ok": 1.0}, tmp_path / "parity.json")
    assert _mode(tmp_path / "parity.json") == 0o644


def test_exported_version_directory_is_readable_by_others(tmp_path, umask_022):
    embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="m")
    tfmetric.export.export_for_serving(embedder, tmp_path / "models")
    (version,) = (tmp_path / "models").glob("*/1")
    assert _mode(version) == 0o755
    for root, dirs, files in os.walk(version):
        for name in dirs:
            assert _mode(os.path.join(root, name)) == 0o755, name
        for name in files:
            assert _mode(os.path.join(root, name)) == 0o644, name
    assert _mode(tmp_path / "models" / "models.config") == 0o644
