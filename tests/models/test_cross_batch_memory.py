"""Cross-batch memory: FIFO ring semantics, what the loss sees, training, save/restore."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmetric

RNG = np.random.default_rng(0)
DIM = 3


def ring_reference(stream_labels, stream_embeddings, memory_size):
    """Slot s holds the newest sample whose stream position is s modulo memory_size."""
    labels = np.zeros(memory_size, np.int64)
    embeddings = np.zeros((memory_size, stream_embeddings.shape[1]), np.float32)
    for position, (label, embedding) in enumerate(
        zip(stream_labels, stream_embeddings, strict=True)
    ):
        labels[position % memory_size] = label
        embeddings[position % memory_size] = embedding
    return labels, embeddings


def contrastive_rows(labels, embeddings, ref_labels, ref_embeddings, margin):
    """Hadsell et al.'s pair costs of each batch row against every other reference, averaged."""
    out = []
    for i, (label, e) in enumerate(zip(labels, embeddings, strict=True)):
        costs = []
        for j, (ref_label, r) in enumerate(zip(ref_labels, ref_embeddings, strict=True)):
            if j == i:
                continue  # the sample itself (references start with the batch)
            d = np.linalg.norm(np.float64(e) - r)
            costs.append(d**2 if label == ref_label else max(0.0, margin - d) ** 2)
        out.append(np.mean(costs))
    return np.array(out)


def test_memory_is_a_fifo_ring_with_wrap_around():
    memory = tfmetric.layers.CrossBatchMemory(memory_size=5, dim=DIM)
    stream_labels = np.arange(100, 113)
    stream = RNG.normal(size=(13, DIM)).astype("float32")
    written = 0
    for size in (2, 3, 4, 1, 3):  # 13 samples: the ring wraps twice
        memory.enqueue(stream_labels[written : written + size], stream[written : written + size])
        written += size
        labels, embeddings = ring_reference(stream_labels[:written], stream[:written], 5)
        assert int(memory.count.numpy()) == written
        assert bool(memory.is_full()) == (written >= 5)
        np.testing.assert_array_equal(memory.labels.numpy()[: min(written, 5)],
                                      labels[: min(written, 5)])
        np.testing.assert_array_equal(memory.embeddings.numpy()[: min(written, 5)],
                                      embeddings[: min(written, 5)])
    # After 13 samples the memory holds exactly the last 5 of the stream.
    assert sorted(memory.labels.numpy().tolist()) == list(range(108, 113))


def _model(memory_size, margin=1.0, jit_compile=False):
    keras.utils.set_random_seed(0)
    embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(DIM)])
    model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=memory_size)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=tfmetric.losses.ContrastiveLoss(margin=margin),
        jit_compile=jit_compile,
    )
    return model


def test_loss_sees_batch_then_memory_once_full():
    model = _model(memory_size=6, margin=2.0)
    labels = np.array([0, 1, 0, 2])
    embeddings = RNG.normal(size=(4, DIM)).astype("float32")
    # Not full yet: the plain in-batch loss.
    np.testing.assert_allclose(
        model.memory_values(labels, embeddings),
        contrastive_rows(labels, embeddings, labels, embeddings, 2.0),
        rtol=1e-5,
    )
    memory_labels = np.array([1, 2, 3, 0, 0, 4])
    memory_embeddings = RNG.normal(size=(6, DIM)).astype("float32")
    model.memory.enqueue(memory_labels, memory_embeddings)
    references = np.concatenate([embeddings, memory_embeddings])
    reference_labels = np.concatenate([labels, memory_labels])
    np.testing.assert_allclose(
        model.memory_values(labels, embeddings),
        contrastive_rows(labels, embeddings, reference_labels, references, 2.0),
        rtol=1e-5,
    )


def test_training_step_uses_then_enqueues_the_batch_embeddings():
    model = _model(memory_size=8, margin=2.0)
    x = RNG.normal(size=(16, 4)).astype("float32")
    y = np.array([0, 1, 2, 3] * 4)
    seen_labels, seen_embeddings = [], []
    for step in range(4):
        xb, yb = x[4 * step : 4 * step + 4], y[4 * step : 4 * step + 4]
        before = model.embedder.predict(xb, verbose=0)
        memory_labels = model.memory.labels.numpy().copy()
        memory_embeddings = model.memory.embeddings.numpy().copy()
        loss = model.train_on_batch(xb, yb)
        if step >= 2:  # memory full (8 samples) from the third step on
            refs = np.concatenate([before, memory_embeddings])
            ref_labels = np.concatenate([yb, memory_labels])
            expected = contrastive_rows(yb, before, ref_labels, refs, 2.0).mean()
        else:
            expected = contrastive_rows(yb, before, yb, before, 2.0).mean()
        np.testing.assert_allclose(loss, expected, rtol=1e-4)
        seen_labels.extend(yb.tolist())
        seen_embeddings.extend(before)
        labels, embeddings = ring_reference(seen_labels, np.array(seen_embeddings), 8)
        filled = min(len(seen_labels), 8)
        np.testing.assert_array_equal(model.memory.labels.numpy()[:filled], labels[:filled])
        np.testing.assert_allclose(
            model.memory.embeddings.numpy()[:filled], embeddings[:filled], rtol=1e-5, atol=1e-6
        )
    # Evaluation leaves the memory alone.
    count = int(model.memory.count.numpy())
    model.evaluate(x[:4], y[:4], verbose=0)
    assert int(model.memory.count.numpy()) == count


@pytest.mark.parametrize(
    "loss",
    [
        (tfmetric.losses.TripletLoss(margin=0.2), True),
        (tfmetric.losses.MultiSimilarityLoss(), False),
    ],
    ids=["triplet_xla", "multi_similarity"],
)
def test_in_batch_losses_train_with_memory(loss):
    loss, jit_compile = loss
    keras.utils.set_random_seed(0)
    embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(DIM)])
    model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=12)
    model.compile(optimizer="adam", loss=loss, jit_compile=jit_compile)
    x = RNG.normal(size=(48, 4)).astype("float32")
    y = np.arange(48) % 6
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(6, drop_remainder=True)
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(model.memory.count.numpy()) == 48
    assert sorted(set(model.memory.labels.numpy().tolist())) == list(range(6))


def test_save_and_restore_keep_the_memory(tmp_path):
    model = _model(memory_size=5)
    model.memory.enqueue(np.arange(4), RNG.normal(size=(4, DIM)))
    model.memory.enqueue(np.arange(4, 7), RNG.normal(size=(3, DIM)))
    path = os.path.join(tmp_path, "xbm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for name in ("labels", "embeddings", "count"):
        np.testing.assert_array_equal(
            getattr(loaded.memory, name).numpy(), getattr(model.memory, name).numpy()
        )
    assert loaded.memory_size == 5
    # The compiled loss comes back and training continues from the restored memory.
    assert isinstance(loaded.loss, tfmetric.losses.ContrastiveLoss) and loaded.loss.margin == 1.0
    loaded.fit(RNG.normal(size=(4, 4)).astype("float32"), np.arange(4) % 2, verbose=0)
    assert int(loaded.memory.count.numpy()) == 11
    checkpoint = tf.train.Checkpoint(model=model)
    saved = checkpoint.save(os.path.join(tmp_path, "ckpt"))
    restored = _model(memory_size=5)
    tf.train.Checkpoint(model=restored).restore(saved).expect_partial()
    np.testing.assert_array_equal(restored.memory.labels.numpy(), model.memory.labels.numpy())
    np.testing.assert_array_equal(restored.memory.embeddings.numpy(), model.memory.embeddings.numpy())
    assert int(restored.memory.count.numpy()) == 7


def test_bad_input_is_named():
    model = _model(memory_size=4)
    dataset = tf.data.Dataset.from_tensor_slices(
        (RNG.normal(size=(12, 4)).astype("float32"), np.arange(12) % 3)
    ).batch(6, drop_remainder=True)
    with pytest.raises(ValueError, match="memory_size"):
        model.fit(dataset, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="memory_size"):
        tfmetric.layers.CrossBatchMemory(memory_size=0, dim=3)
    with pytest.raises(ValueError, match="memory_size"):
        model.memory.enqueue(np.arange(5), np.zeros((5, DIM)))
    with pytest.raises(TypeError, match="in-batch loss"):
        model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="embedder"):
        tfmetric.models.CrossBatchMemoryModel(keras.layers.Dense(3), memory_size=4)


def _in_batch_losses():
    from tfmetric.losses.batch import InBatchLoss

    for name in tfmetric.losses.__all__:
        cls = getattr(tfmetric.losses, name)
        if isinstance(cls, type) and issubclass(cls, InBatchLoss) and cls is not InBatchLoss:
            yield cls


def test_every_in_batch_loss_sees_the_memory_with_finite_values_and_gradients():
    labels = np.array([0, 1, 2, 0, 1, 2])
    memory_labels = np.arange(8) % 4
    memory_embeddings = RNG.normal(size=(8, DIM)).astype("float32")
    classes = list(_in_batch_losses())
    assert len(classes) >= 10
    for cls in classes:
        embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(DIM)])
        model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=8)
        model.compile(optimizer="sgd", loss=cls())
        embeddings = tf.Variable(RNG.normal(size=(6, DIM)).astype("float32"))
        batch_only = np.asarray(model.memory_values(labels, embeddings))
        model.memory.enqueue(memory_labels, memory_embeddings)
        with tf.GradientTape() as tape:
            values = model.memory_values(labels, embeddings)
            total = tf.reduce_sum(values)
        gradient = tape.gradient(total, embeddings)
        assert values.shape == (6,), cls.__name__
        assert np.all(np.isfinite(values)) and np.all(np.isfinite(gradient)), cls.__name__
        assert not np.allclose(values, batch_only), cls.__name__  # the memory changed the loss
