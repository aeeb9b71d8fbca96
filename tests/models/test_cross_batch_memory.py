"""Cross-batch memory: FIFO ring semantics, what the loss sees, training, save/restore."""

import os

import backend_ops
import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_memory import largest_tensor_elements

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


def test_loss_sees_the_batch_and_the_written_slots():
    model = _model(memory_size=6, margin=2.0)
    labels = np.array([0, 1, 0, 2])
    embeddings = RNG.normal(size=(4, DIM)).astype("float32")
    # Empty memory: the plain in-batch loss.
    np.testing.assert_allclose(
        model.memory_values(labels, embeddings),
        contrastive_rows(labels, embeddings, labels, embeddings, 2.0),
        rtol=1e-5,
    )
    memory_labels = np.array([1, 2, 3, 0, 0, 4])
    memory_embeddings = RNG.normal(size=(6, DIM)).astype("float32")
    # Four of six slots written: the loss sees the batch and those four, not the zeros.
    model.memory.enqueue(memory_labels[:4], memory_embeddings[:4])
    np.testing.assert_allclose(
        model.memory_values(labels, embeddings),
        contrastive_rows(
            labels,
            embeddings,
            np.concatenate([labels, memory_labels[:4]]),
            np.concatenate([embeddings, memory_embeddings[:4]]),
            2.0,
        ),
        rtol=1e-5,
    )
    model.memory.enqueue(memory_labels[4:], memory_embeddings[4:])
    references = np.concatenate([embeddings, memory_embeddings])
    reference_labels = np.concatenate([labels, memory_labels])
    np.testing.assert_allclose(
        model.memory_values(labels, embeddings),
        contrastive_rows(labels, embeddings, reference_labels, references, 2.0),
        rtol=1e-5,
    )


def test_training_step_uses_then_enqueues_the_batch_embeddings_with_wrap_around():
    # Memory of 6, batches of 4: the ring wraps at the second step (slots 4, 5, 0, 1).
    model = _model(memory_size=6, margin=2.0)
    x = RNG.normal(size=(20, 4)).astype("float32")
    y = np.array([0, 1, 2, 3, 4] * 4)
    seen_labels, seen_embeddings = [], []
    for step in range(5):
        xb, yb = x[4 * step : 4 * step + 4], y[4 * step : 4 * step + 4]
        before = model.embedder.predict(xb, verbose=0)
        written = min(len(seen_labels), 6)
        memory_labels = model.memory.labels.numpy()[:written].copy()
        memory_embeddings = model.memory.embeddings.numpy()[:written].copy()
        loss = model.train_on_batch(xb, yb)
        # Anchors: the batch's rows; references: the batch, then the written slots.
        refs = np.concatenate([before, memory_embeddings])
        ref_labels = np.concatenate([yb, memory_labels])
        expected = contrastive_rows(yb, before, ref_labels, refs, 2.0).mean()
        np.testing.assert_allclose(loss, expected, rtol=1e-4)
        seen_labels.extend(yb.tolist())
        seen_embeddings.extend(before)
        labels, embeddings = ring_reference(seen_labels, np.array(seen_embeddings), 6)
        filled = min(len(seen_labels), 6)
        np.testing.assert_array_equal(model.memory.labels.numpy()[:filled], labels[:filled])
        np.testing.assert_allclose(
            model.memory.embeddings.numpy()[:filled], embeddings[:filled], rtol=1e-5, atol=1e-6
        )
    # FIFO: after 20 samples the memory holds the last 6 of the stream, slot s = position % 6.
    np.testing.assert_array_equal(model.memory.labels.numpy(), [y[18], y[19], y[14], y[15],
                                                                y[16], y[17]])
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
    # JAX's compiled step is its jit (without it every op of the step runs eagerly, ~10 s).
    jit_compile = jit_compile or keras.backend.backend() == "jax"
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


@pytest.mark.tf_only  # a tf.train.Checkpoint
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
    # The restored loss sees the restored memory: the wrapped ring (slots 0-1 rewritten) and the
    # batch, with every slot written.
    labels = np.array([0, 5, 6])
    batch = RNG.normal(size=(3, DIM)).astype("float32")
    memory_labels = np.array([5, 6, 2, 3, 4])
    memory = loaded.memory.embeddings.numpy()
    np.testing.assert_array_equal(loaded.memory.labels.numpy(), memory_labels)
    np.testing.assert_allclose(
        loaded.memory_values(labels, batch),
        contrastive_rows(
            labels,
            batch,
            np.concatenate([labels, memory_labels]),
            np.concatenate([batch, memory]),
            1.0,
        ),
        rtol=1e-5,
    )
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
    classes = [cls for cls in _in_batch_losses() if cls is not tfmetric.losses.NPairsLoss]
    assert len(classes) >= 10
    for cls in classes:
        embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(DIM)])
        model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=8)
        model.compile(optimizer="sgd", loss=cls())
        embeddings = RNG.normal(size=(6, DIM)).astype("float32")
        batch_only = keras.ops.convert_to_numpy(model.memory_values(labels, embeddings))
        model.memory.enqueue(memory_labels, memory_embeddings)
        values = keras.ops.convert_to_numpy(model.memory_values(labels, embeddings))
        total, gradient = backend_ops.value_and_grad(
            lambda e, m=model: keras.ops.sum(m.memory_values(labels, e)), embeddings
        )
        np.testing.assert_allclose(total, values.sum(), rtol=1e-5)
        assert values.shape == (6,), cls.__name__
        assert np.all(np.isfinite(values)) and np.all(np.isfinite(gradient)), cls.__name__
        assert not np.allclose(values, batch_only), cls.__name__  # the memory changed the loss


def test_npairs_is_refused_with_the_reason():
    embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(DIM)])
    model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=8)
    with pytest.raises(ValueError, match="NPairsLoss cannot use references.*one batch"):
        model.compile(optimizer="sgd", loss=tfmetric.losses.NPairsLoss())


@pytest.mark.tf_only  # inspects the TensorFlow graph
def test_memory_terms_hold_no_square_of_batch_plus_memory():
    batch, memory = 7, 61
    embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(DIM)])
    model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=memory)
    model.compile(optimizer="sgd", loss=tfmetric.losses.TripletLoss(mining="semi-hard"))
    model.memory.enqueue(np.arange(50) % 4, RNG.normal(size=(50, DIM)))
    labels = tf.constant(np.arange(batch) % 3, "int64")
    x = tf.constant(RNG.normal(size=(batch, DIM)).astype("float32"))

    def step(embeddings, y):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            values, counts = model.memory_terms(y, embeddings)
            value = tf.reduce_sum(values) / tf.reduce_sum(counts)
        return value, tape.gradient(value, embeddings)

    # (B, B + M) = 476 entries at most; (B + M)² would be 4624.
    assert largest_tensor_elements(step, x, labels) <= batch * (batch + memory)


class CountingTripletLoss(tfmetric.losses.TripletLoss):
    """Counts the traces of the memory's loss call (a Python side effect runs once per trace)."""

    traces = 0

    def reference_terms(self, *args, **kwargs):
        CountingTripletLoss.traces += 1
        return super().reference_terms(*args, **kwargs)


def test_mining_schedule_drives_the_loss_inside_the_memory_model_without_retracing():
    from references import pairwise

    keras.utils.set_random_seed(0)
    embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(DIM)])
    model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=12)
    CountingTripletLoss.traces = 0
    loss = CountingTripletLoss(margin=0.1, mining="easy")
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, jit_compile=True)
    schedule = tfmetric.callbacks.MiningSchedule(
        margin={0: 0.1, 2: 5.0}, mining={0: "easy", 1: "hard", 2: "easy"}
    )
    x = RNG.normal(size=(12, 4)).astype("float32")
    y = np.arange(12) % 3
    traces = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: traces.append(CountingTripletLoss.traces)
    )
    # One batch of 12 per epoch; from the second epoch on the memory holds the same 12 samples
    # (frozen embedder), so each anchor sees the batch and 12 copies: numpy reference below.
    losses = model.fit(
        x, y, batch_size=12, epochs=3, verbose=0, shuffle=False, callbacks=[schedule, probe]
    ).history["loss"]
    emb = keras.ops.convert_to_numpy(embedder(x)).astype(np.float64)

    def expected(margin, mining, with_memory):
        refs = np.concatenate([emb, emb]) if with_memory else emb
        ref_y = np.concatenate([y, y]) if with_memory else y
        d = pairwise(emb, refs, "euclidean")
        terms = []
        for a in range(12):
            others = [j for j in range(len(ref_y)) if j != a]
            pos = [d[a, j] for j in others if ref_y[j] == y[a]]
            neg = [d[a, j] for j in others if ref_y[j] != y[a]]
            gap = max(pos) - min(neg) if mining == "hard" else min(pos) - max(neg)
            terms.append(max(gap + margin, 0.0))
        return np.mean(terms)

    wanted = [expected(0.1, "easy", False), expected(0.1, "hard", True),
              expected(5.0, "easy", True)]
    assert len({round(v, 4) for v in wanted}) == 3
    # float32 sums of distances against the float64 reference (XLA's order differs by backend).
    # PyTorch: 3.5e-5 off in the last epoch (easy mining: each anchor's closest positive is its
    # copy in the memory, at distance 0 in float64 but sqrt(float32 rounding) through the GEMM
    # form of the distance when the memory's copy and the batch differ in their last bits).
    rtol = 1e-4 if keras.backend.backend() == "torch" else 3e-5
    np.testing.assert_allclose(losses, wanted, rtol=rtol, atol=1e-6)
    if keras.backend.backend() == "tensorflow":
        assert traces[0] >= 1 and traces == [traces[0]] * 3  # traced once, then variables are read
    else:  # JAX: the compiled step reads only the model's state; each change retraces it
        # (PyTorch: torch.compile replays the counter's Python side effect at every step)
        assert traces[0] >= 1 and traces[-1] > traces[0]


def test_enqueue_checks_labels_and_embeddings_and_writes_nothing_on_error():
    memory = tfmetric.layers.CrossBatchMemory(memory_size=4, dim=DIM)
    good = RNG.normal(size=(2, DIM)).astype("float32")
    nan = np.array([[0.0, np.nan, 1.0], [1.0, 2.0, 3.0]], "float32")
    cases = [
        # A raw TensorScatterUpdate error ("Outer dimensions") before.
        (lambda: memory.enqueue(np.arange(3), good), "`labels` has 3 labels but `embeddings`"),
        (lambda: memory.enqueue(np.arange(2), nan), "`embeddings` contains NaN"),
        (lambda: memory.enqueue(np.arange(2), np.where(nan == nan, good, np.inf)), "`embeddings`"),
        (lambda: memory.enqueue(np.array([0.5, 1.0]), good), "`labels` must hold integer"),
        (lambda: memory.enqueue(np.arange(2), good[:, :2]), r"`embeddings` must have shape"),
    ]
    # Strings are refused before any backend converts them (JAX cannot hold them).
    cases.append((lambda: memory.enqueue(np.array(["a", "b"]), good), "`labels` must hold"))
    cases.append((lambda: memory.enqueue(np.arange(2), good.astype(str)), "`embeddings`"))
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert int(keras.ops.convert_to_numpy(memory.count)) == 0
    memory.enqueue(np.array([[7], [9]]), good)  # (B, 1) labels are accepted
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(memory.labels), [7, 9, 0, 0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(memory.embeddings)[:2], good)
