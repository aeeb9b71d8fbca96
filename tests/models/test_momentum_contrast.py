"""MoCo: InfoNCE against a numpy reference, the exact EMA update, the key queue, bad input."""

import functools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from references import numeric_gradient

import tfmetric

RNG = np.random.default_rng(0)


def _unit(x):
    x = keras.ops.convert_to_numpy(x).astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def moco_reference(queries, keys, queue, temperature, ids=None, queue_ids=None, valid=None):
    """He et al.'s InfoNCE with a (K+1)-way softmax, the positive key at index 0."""
    q, k, n = _unit(queries), _unit(keys), _unit(queue)
    out = []
    for i in range(len(q)):
        logits = [q[i] @ k[i] / temperature]
        for j in range(len(n)):
            if valid is not None and not valid[j]:
                continue
            if ids is not None and queue_ids[j] == ids[i]:
                continue
            logits.append(q[i] @ n[j] / temperature)
        logits = np.array(logits)
        out.append(np.log(np.sum(np.exp(logits))) - logits[0])
    return np.array(out)


def test_loss_matches_reference_with_masked_slots_and_same_ids():
    q, k, queue = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3)), RNG.normal(size=(6, 3))
    ids, queue_ids = np.array([1, 2, 3, 4]), np.array([2, 9, 4, 7, 1, 8])
    valid = np.array([True, True, True, True, False, False])
    np.testing.assert_allclose(
        tfmetric.losses.momentum_contrast_loss(q, k, queue, 0.2),
        moco_reference(q, k, queue, 0.2),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        tfmetric.losses.momentum_contrast_loss(q, k, queue, 0.2, ids, queue_ids, valid),
        moco_reference(q, k, queue, 0.2, ids, queue_ids, valid),
        rtol=1e-5,
    )


def _model(momentum=0.9, queue_size=6, seed=0):
    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = tfmetric.models.MomentumContrastModel(
        encoder, queue_size=queue_size, momentum=momentum, temperature=0.5
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=True)
    return model


def _dense_moco_loss(weights, xq, keys, queue, temperature, ids, queue_ids):
    """The mean InfoNCE loss of queries `xq @ kernel + bias` (`weights` = [kernel; bias])."""
    queries = xq @ weights[:-1] + weights[-1]
    return moco_reference(queries, keys, queue, temperature, ids, queue_ids).mean()


def moco_steps_reference(kernel, bias, batches, ids, momentum, queue_size, temperature, lr):
    """N MoCo steps in float64 from He et al.'s Algorithm 1, the encoder a dense layer.

    Each step embeds the queries with the query encoder θq and the keys with
    the key encoder θk, takes an SGD step of θq on the InfoNCE loss against the
    keys and the queue (gradient by central differences; keys carry none),
    then sets θk ← m·θk + (1−m)·θq and enqueues the keys, dequeuing the oldest
    past `queue_size`. Returns the per-step losses, θq, θk and the queue
    (keys and ids, oldest first).
    """
    query = [np.asarray(kernel, np.float64), np.asarray(bias, np.float64)]
    key = [w.copy() for w in query]  # θk starts as a copy of θq
    queue, queue_ids, losses = [], [], []
    for xb, yb in zip(batches, ids, strict=True):
        xq, xk = np.asarray(xb[: len(yb)], np.float64), np.asarray(xb[len(yb):], np.float64)
        keys = xk @ key[0] + key[1]
        loss = functools.partial(
            _dense_moco_loss, xq=xq, keys=keys, queue=np.reshape(queue, (-1, keys.shape[1])),
            temperature=temperature, ids=yb, queue_ids=np.asarray(queue_ids),
        )
        weights = np.concatenate([query[0], query[1][None]])
        losses.append(loss(weights))
        weights = weights - lr * numeric_gradient(loss, weights)
        query = [weights[:-1], weights[-1]]
        key = [momentum * k + (1 - momentum) * q for k, q in zip(key, query, strict=True)]
        queue, queue_ids = queue + list(keys), queue_ids + list(yb)
        queue, queue_ids = queue[-queue_size:], queue_ids[-queue_size:]
    return np.array(losses), query, key, np.array(queue), np.array(queue_ids)


def test_steps_update_the_momentum_encoder_by_ema_and_enqueue_keys_fifo():
    """4 compiled `fit` steps of 3 samples x 2 views, a queue of 6: it wraps round twice."""
    model = _model()
    encoder, momentum = model.encoder, model.momentum_encoder
    for target, source in zip(momentum.weights, encoder.weights, strict=True):
        np.testing.assert_array_equal(target.numpy(), source.numpy())  # starts as a copy
    steps, batch = 4, 3
    x = RNG.normal(size=(steps, 2 * batch, 4)).astype("float32")
    ids = np.array([[0, 1, 2], [3, 4, 0], [1, 5, 6], [2, 7, 3]])
    losses, query, key, queue, queue_ids = moco_steps_reference(
        *[w.numpy() for w in encoder.weights], x, ids, 0.9, 6, 0.5, 0.5
    )
    history = model.fit(
        x.reshape(-1, 4), np.concatenate([np.tile(i, 2) for i in ids]), batch_size=2 * batch,
        shuffle=False, epochs=1, verbose=0,
    )
    np.testing.assert_allclose(history.history["loss"][0], losses.mean(), rtol=1e-5)
    for weight, expected in zip(encoder.weights, query, strict=True):
        np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-5, atol=1e-6)
    for weight, expected in zip(momentum.weights, key, strict=True):
        np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-5, atol=1e-6)
    count = int(model.queue.count.numpy())
    assert count == steps * batch
    oldest_first = (count + np.arange(6)) % 6  # the ring's slots, oldest entry first
    np.testing.assert_allclose(
        model.queue.embeddings.numpy()[oldest_first], queue, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(model.queue.labels.numpy()[oldest_first], queue_ids)


def test_trains_on_two_view_batches_under_xla_and_round_trips(tmp_path):
    model = _model(momentum=0.99, queue_size=16)
    model.compile(optimizer="adam", jit_compile=True)
    x = RNG.normal(size=(20, 4)).astype("float32")

    def jitter(sample, seed):
        return sample + 0.1 * tf.random.stateless_normal(tf.shape(sample), seed)

    dataset = tfmetric.data.multi_view_dataset(x, 4, jitter, seed=0)
    history = model.fit(dataset, steps_per_epoch=6, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(model.queue.count.numpy()) == 24
    path = os.path.join(tmp_path, "moco.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for name in ("embeddings", "labels", "count"):
        np.testing.assert_array_equal(
            getattr(loaded.queue, name).numpy(), getattr(model.queue, name).numpy()
        )
    assert not np.allclose(  # trained: the momentum encoder lags the encoder
        model.momentum_encoder.weights[0].numpy(), model.encoder.weights[0].numpy()
    )
    for target, source in zip(loaded.momentum_encoder.weights, model.momentum_encoder.weights,
                              strict=True):
        np.testing.assert_array_equal(target.numpy(), source.numpy())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.get_config()["momentum"] == 0.99


def test_bad_input_is_named():
    encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    for momentum in (1.0, -0.1, 2):
        with pytest.raises(ValueError, match="momentum"):
            tfmetric.models.MomentumContrastModel(encoder, momentum=momentum)
    with pytest.raises(ValueError, match="temperature"):
        tfmetric.models.MomentumContrastModel(encoder, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        tfmetric.losses.momentum_contrast_loss(np.ones((2, 3)), np.ones((2, 3)), np.ones((4, 3)), 0)
    with pytest.raises(ValueError, match="keys"):
        tfmetric.losses.momentum_contrast_loss(np.ones((2, 3)), np.ones((3, 3)), np.ones((4, 3)))


def test_bad_batches_are_named_when_training():
    model = _model(queue_size=2)
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.zeros((12, 4), "float32"), np.zeros(12, "int64"))
    ).batch(6, drop_remainder=True)
    with pytest.raises(ValueError, match="queue_size|memory_size"):
        model.fit(dataset, epochs=1, verbose=0)
    odd = tf.data.Dataset.from_tensor_slices(
        (np.zeros((10, 4), "float32"), np.zeros(10, "int64"))
    ).batch(5, drop_remainder=True)
    with pytest.raises(ValueError, match="odd"):
        _model().fit(odd, epochs=1, verbose=0)


def test_loss_checks_its_inputs():
    q = RNG.normal(size=(4, 3)).astype("float32")
    nan = np.where(np.arange(12).reshape(4, 3) == 4, np.nan, q).astype("float32")
    loss = tfmetric.losses.momentum_contrast_loss
    cases = [
        (lambda: loss(nan, q, q), "`queries` contains NaN"),
        (lambda: loss(q, nan, q), "`keys` contains NaN"),
        (lambda: loss(q, q, nan), "`queue` contains NaN"),
        (lambda: loss(q, q, q[:, :2]), "`queries` and `queue`"),
        (lambda: loss(q, q[:, :2], q), "`queries` and `keys`"),
        (lambda: loss(q[0], q[0], q), "`queries` must be 2-D"),
        (lambda: loss(q[:, :0], q[:, :0], q[:, :0]), "`queries` must have at least one feature"),
        (lambda: loss(q[:0], q[:0], q), "`queries` is empty"),
        (lambda: loss(q.astype(str), q, q), "`queries` must be floating-point"),
        (lambda: loss(q, q, q, queue_valid=np.array([True, False])), "`queue_valid` has 2"),
        (lambda: loss(q, q, q, queue_valid=np.ones(4, "float32")), "`queue_valid` must be"),
        (lambda: loss(q, q, q, ids=np.arange(3), queue_ids=np.arange(4)), "`ids` has 3"),
        (lambda: loss(q, q, q, ids=np.arange(4), queue_ids=np.arange(5)), "`queue_ids` has 5"),
    ]
    if keras.backend.backend() == "tensorflow":  # JAX cannot hold strings at all
        cases.append((lambda: loss(q.astype(str), q, q), "`queries` must be floating-point"))
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
