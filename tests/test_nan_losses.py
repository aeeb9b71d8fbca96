"""A NaN embedding gives a NaN loss, also in compiled steps, so `TerminateOnNaN` stops training.

Eager calls reject NaN inputs with a `ValueError`; a traced step cannot
raise, and there the masked selections of mining (hardest pairs, masked
min/max, sub-center max) must not drop the NaN.
"""

import backend_ops
import keras
import numpy as np
import pytest

from tfmetric import layers, losses
from tfmetric.layers import proxy_head
from tfmetric.losses import batch


def _public_subclasses(base, module):
    found, stack = set(), [base]
    while stack:
        for cls in stack.pop().__subclasses__():
            stack.append(cls)
            if getattr(module, cls.__name__, None) is cls:
                found.add(cls)
    return sorted(found, key=lambda cls: cls.__name__)


IN_BATCH = [(cls.__name__, cls, {}) for cls in _public_subclasses(batch.InBatchLoss, losses)]
IN_BATCH.append(("TripletLoss-hard", losses.TripletLoss, {"mining": "hard"}))
HEADS = _public_subclasses(proxy_head.ProxyHead, layers)

LABELS = np.array([0, 0, 1, 1, 2, 2], "int32")


def _batches():
    clean = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    with_nan = clean.copy()
    with_nan[1] = np.nan
    return clean, with_nan


def test_every_loss_and_head_is_covered():
    names = {name for name, _, _ in IN_BATCH}
    assert {
        "MultiSimilarityLoss",
        "CircleLoss",
        "LiftedStructureLoss",
        "SoftNearestNeighborLoss",
        "AnchorTripletLoss",
        "PNLoss",
        "TripletLoss-hard",
    } <= names
    assert {layers.SubCenterArcFace, layers.ProxyAnchor, layers.ArcFace} <= set(HEADS)


@pytest.mark.parametrize(
    "cls, kwargs", [case[1:] for case in IN_BATCH], ids=[c[0] for c in IN_BATCH]
)
def test_in_batch_loss_is_nan_for_a_nan_embedding(cls, kwargs):
    clean, with_nan = _batches()
    loss = cls(**kwargs)
    with pytest.raises(ValueError, match="`y_pred` contains NaN"):
        loss(LABELS, with_nan)
    step = backend_ops.jit(lambda y, e: loss(y, e))
    assert np.isfinite(keras.ops.convert_to_numpy(step(LABELS, clean)))
    assert np.isnan(keras.ops.convert_to_numpy(step(LABELS, with_nan)))


def test_nan_survives_a_batch_without_terms():
    # No positives: no triplet, the mean divides by zero terms (0 when finite).
    _, with_nan = _batches()
    labels = np.arange(6, dtype="int32")
    step = backend_ops.jit(lambda y, e: losses.TripletLoss(mining="hard")(y, e))
    assert float(keras.ops.convert_to_numpy(step(labels, np.nan_to_num(with_nan)))) == 0.0
    assert np.isnan(keras.ops.convert_to_numpy(step(labels, with_nan)))


@pytest.mark.parametrize("cls", HEADS, ids=[cls.__name__ for cls in HEADS])
def test_head_is_nan_for_a_nan_embedding(cls):
    clean, with_nan = _batches()
    head = cls(num_classes=3)
    head.build(clean.shape)
    with pytest.raises(ValueError, match="`embeddings` contains NaN"):
        head(with_nan, LABELS)
    step = backend_ops.jit(lambda e, y: keras.ops.mean(head(e, y)))
    assert np.isfinite(keras.ops.convert_to_numpy(step(clean, LABELS)))
    assert np.isnan(keras.ops.convert_to_numpy(step(with_nan, LABELS)))


def test_terminate_on_nan_stops_at_the_first_batch():
    clean, with_nan = _batches()
    x = np.concatenate([with_nan, clean, clean])
    y = np.tile(LABELS, 3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    # Not XLA under TensorFlow, where the plain traced step dropped the NaN too (JAX always jits).
    jit = backend_ops.backend() == "jax"
    model.compile(optimizer="sgd", loss=losses.MultiSimilarityLoss(), jit_compile=jit)
    batches = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda i, logs: batches.append(logs["loss"])
    )
    model.fit(
        x,
        y,
        batch_size=6,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN(), record],
    )
    assert len(batches) == 1 and np.isnan(batches[0])
    assert model.stop_training
