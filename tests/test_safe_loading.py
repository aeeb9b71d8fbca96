"""Every `.keras` file tfmetric produces loads with `safe_mode=True` (no Lambda, no pickled code)."""

import json
import zipfile

import keras
import numpy as np
import pytest

import tfmetric

LOSSES = [
    tfmetric.losses.TripletLoss(margin=0.3, mining="hard", cross_replica=False),
    tfmetric.losses.ContrastiveLoss(),
    tfmetric.losses.MultiSimilarityLoss(),
    tfmetric.losses.CircleLoss(),
    tfmetric.losses.SupervisedContrastiveLoss(),
    tfmetric.losses.NTXentLoss(),
    tfmetric.losses.LiftedStructureLoss(),
    tfmetric.losses.NPairsLoss(),
    tfmetric.losses.SoftNearestNeighborLoss(distance=tfmetric.distances.Minkowski(3)),
]
HEADS = [
    tfmetric.layers.ArcFace(3),
    tfmetric.layers.CosFace(3),
    tfmetric.layers.SubCenterArcFace(3),
    tfmetric.layers.NormalizedSoftmax(3),
    tfmetric.layers.ProxyAnchor(3),
    tfmetric.layers.ProxyNCA(3),
]
X = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")


def _embedder():
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])


def _config_text(path):
    with zipfile.ZipFile(path) as archive:
        return archive.read("config.json").decode()


def _assert_safe(path):
    text = _config_text(path)
    json.loads(text)
    assert '"Lambda"' not in text and "__lambda__" not in text
    return keras.models.load_model(path, safe_mode=True)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: type(loss).__name__)
def test_model_compiled_with_loss_loads_safely(tmp_path, loss):
    model = _embedder()
    model.compile(optimizer="sgd", loss=loss)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = _assert_safe(path)
    assert type(restored.loss) is type(loss)
    assert restored.loss.get_config() == loss.get_config()
    np.testing.assert_allclose(restored.predict(X, verbose=0), model.predict(X, verbose=0))


@pytest.mark.parametrize("head", HEADS, ids=lambda head: type(head).__name__)
def test_proxy_model_loads_safely(tmp_path, head):
    model = tfmetric.models.ProxyModel(_embedder(), head)
    model.compile(optimizer="sgd")
    model.train_on_batch(X, np.arange(6) % 3)
    path = tmp_path / "proxy.keras"
    model.save(path)
    restored = _assert_safe(path)
    np.testing.assert_allclose(
        restored.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: tfmetric.models.SiameseModel(_embedder(), scorer=tfmetric.layers.Mahalanobis()),
        lambda: tfmetric.models.SiameseModel(_embedder(), scorer=tfmetric.layers.WeightedL1()),
        lambda: tfmetric.models.SiameseModel(_embedder(), distance="cosine"),
        lambda: tfmetric.models.TripletModel(_embedder()),
    ],
    ids=["siamese_mahalanobis", "siamese_weighted_l1", "siamese_cosine", "triplet"],
)
def test_pair_and_triplet_models_load_safely(tmp_path, build):
    model = build()
    model.compile(optimizer="sgd")
    inputs = (X, X[::-1]) if isinstance(model, tfmetric.models.SiameseModel) else (X, X, X[::-1])
    expected = model.predict(inputs, verbose=0)
    path = tmp_path / "pair.keras"
    model.save(path)
    restored = _assert_safe(path)
    np.testing.assert_allclose(restored.predict(inputs, verbose=0), expected, atol=1e-6)
