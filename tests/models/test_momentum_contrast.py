"""MoCo: InfoNCE against a numpy reference, the exact EMA update, the key queue, bad input."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmetric

RNG = np.random.default_rng(0)


def _unit(x):
    x = np.asarray(x, np.float64)
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
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    return model


@pytest.mark.tf_only  # MomentumContrastModel trains under TensorFlow only
def test_steps_use_the_queue_then_update_by_exact_ema_and_enqueue_keys():
    model = _model()
    encoder, momentum = model.encoder, model.momentum_encoder
    for target, source in zip(momentum.weights, encoder.weights, strict=True):
        np.testing.assert_array_equal(target.numpy(), source.numpy())  # starts as a copy
    x = RNG.normal(size=(3, 6, 4)).astype("float32")  # 3 steps of 3 samples x 2 views
    ids = np.array([[0, 1, 2], [3, 4, 0], [1, 5, 6]])
    queue_keys, queue_ids = [], []
    for step in range(3):
        xb, yb = x[step], np.tile(ids[step], 2)
        old_momentum = [w.numpy().copy() for w in momentum.weights]
        queries = encoder.predict(xb[:3], verbose=0)
        keys = momentum.predict(xb[3:], verbose=0)
        queue = model.queue.embeddings.numpy().copy()
        valid = np.arange(6) < len(queue_keys)
        expected = moco_reference(
            queries, keys, queue, 0.5, ids[step], model.queue.labels.numpy(), valid
        ).mean()
        loss = model.train_on_batch(xb, yb)
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        for target, source, old in zip(momentum.weights, encoder.weights, old_momentum,
                                       strict=True):
            np.testing.assert_allclose(
                target.numpy(), 0.9 * old + 0.1 * source.numpy(), rtol=1e-6, atol=1e-7
            )
        queue_keys.extend(keys)
        queue_ids.extend(ids[step])
        filled = min(len(queue_keys), 6)
        slots = [p % 6 for p in range(len(queue_keys))][-filled:]
        np.testing.assert_allclose(
            model.queue.embeddings.numpy()[slots], np.array(queue_keys)[-filled:], rtol=1e-5
        )
        np.testing.assert_array_equal(model.queue.labels.numpy()[slots], queue_ids[-filled:])
    assert int(model.queue.count.numpy()) == 9


@pytest.mark.tf_only  # MomentumContrastModel trains under TensorFlow only
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
    np.testing.assert_array_equal(loaded.queue.embeddings.numpy(), model.queue.embeddings.numpy())
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


@pytest.mark.tf_only  # MomentumContrastModel trains under TensorFlow only
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
