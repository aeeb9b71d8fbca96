import functools
import inspect
import itertools
import json

import backend_ops
import keras
import numpy as np
import pytest

import tfmetric
from tfmetric.callbacks import MiningSchedule


def _frozen_model(loss, jit_compile=True):
    """A model whose weights do not move (learning rate 0): epoch losses differ only by the loss."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, jit_compile=jit_compile)
    return model


def _data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 4)
    return rng.normal(size=(12, 3)).astype("float32"), y


def _expected(model, x, y, **kwargs):
    values = tfmetric.losses.triplet_loss(y, model(x), **kwargs)
    return float(np.mean(keras.ops.convert_to_numpy(values)))


@pytest.mark.parametrize("jit_compile", [True, False])
def test_margin_change_takes_effect_without_recompiling(jit_compile):
    x, y = _data()
    loss = tfmetric.losses.TripletLoss(margin=0.1, mining="semi-hard")
    model = _frozen_model(loss, jit_compile)
    optimizer = model.optimizer
    schedule = MiningSchedule(margin={0: 0.1, 1: 2.0})
    history = model.fit(
        x, y, batch_size=12, epochs=3, verbose=0, shuffle=False, callbacks=[schedule]
    )
    losses = history.history["loss"]
    small = _expected(model, x, y, margin=0.1, mining="semi-hard")
    large = _expected(model, x, y, margin=2.0, mining="semi-hard")
    assert large > small + 0.5
    np.testing.assert_allclose(losses, [small, large, large], rtol=1e-5)
    assert model.optimizer is optimizer and loss.margin == 2.0
    assert schedule.history == [(0, 0.1, "semi-hard"), (1, 2.0, "semi-hard"), (2, 2.0, "semi-hard")]


def test_mining_change_takes_effect():
    x, y = _data()
    model = _frozen_model(tfmetric.losses.TripletLoss(margin=0.5))
    schedule = MiningSchedule(mining=lambda epoch: "semi-hard" if epoch < 1 else "hard")
    losses = model.fit(x, y, batch_size=12, epochs=2, verbose=0, callbacks=[schedule]).history[
        "loss"
    ]
    semi = _expected(model, x, y, margin=0.5, mining="semi-hard")
    hard = _expected(model, x, y, margin=0.5, mining="hard")
    assert abs(semi - hard) > 1e-3
    np.testing.assert_allclose(losses, [semi, hard], rtol=1e-5)


def test_without_retrace_a_changed_attribute_is_ignored():
    # Documents why the callback rebuilds the train function: the traced step keeps the old margin.
    x, y = _data()
    loss = tfmetric.losses.TripletLoss(margin=0.1)
    model = _frozen_model(loss)

    class NaiveSchedule(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            loss.margin = 0.1 if epoch == 0 else 2.0

    losses = model.fit(x, y, batch_size=12, epochs=2, verbose=0, callbacks=[NaiveSchedule()])
    losses = losses.history["loss"]
    if keras.backend.backend() == "torch":
        # PyTorch has no traced step to keep the old margin: torch.compile guards on the
        # loss's attributes and recompiles, so the naive change takes effect.
        expected = [_expected(model, x, y, margin=m) for m in (0.1, 2.0)]
        np.testing.assert_allclose(losses, expected, rtol=1e-5)
        return
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)


def test_triplet_model_margin_schedule():
    rng = np.random.default_rng(1)
    a, p, n = (rng.normal(size=(8, 3)).astype("float32") for _ in range(3))
    embedder = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model = tfmetric.models.TripletModel(embedder)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=tfmetric.losses.TripletMarginLoss(margin=0.0),
        jit_compile=True,
    )
    schedule = MiningSchedule(margin={0: 0.0, 1: 3.0})
    losses = model.fit(
        (a, p, n), np.zeros((8, 3)), batch_size=8, epochs=2, verbose=0, callbacks=[schedule]
    ).history["loss"]
    emb = [keras.ops.convert_to_numpy(embedder(t)) for t in (a, p, n)]
    gap = np.linalg.norm(emb[0] - emb[1], axis=1) - np.linalg.norm(emb[0] - emb[2], axis=1)
    expected = [np.mean(np.maximum(gap + m, 0)) for m in (0.0, 3.0)]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_bad_schedules():
    with pytest.raises(ValueError, match="margin"):
        MiningSchedule()
    with pytest.raises(ValueError, match="epoch 0"):
        MiningSchedule(margin={2: 0.5})
    with pytest.raises(ValueError, match="margin"):
        MiningSchedule(margin={0: -1.0})
    with pytest.raises(ValueError, match="epochs"):
        MiningSchedule(margin={-1: 0.5, 0: 0.1})
    with pytest.raises(ValueError, match="mining"):
        MiningSchedule(mining={0: 3})
    with pytest.raises(ValueError, match=r"keys must be epochs .* True"):
        MiningSchedule(margin={0: 0.1, True: 0.5})  # was read as epoch 1
    with pytest.raises(ValueError, match="`verbose`"):
        MiningSchedule(margin={0: 0.1}, verbose="yes")
    assert MiningSchedule(margin={0: 0.1}, verbose=True).verbose == 1
    x, y = _data()
    model = _frozen_model(tfmetric.losses.MultiSimilarityLoss())
    with pytest.raises(ValueError, match="no `mining` attribute"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[MiningSchedule(mining={0: "hard"})])
    model = _frozen_model(tfmetric.losses.TripletLoss())
    with pytest.raises(ValueError, match="mining"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[MiningSchedule(mining={0: "hardest"})])


def test_config_round_trip():
    schedule = MiningSchedule(margin={0: 0.1, 3: 0.4}, mining={0: "semi-hard", 5: "hard"})
    clone = MiningSchedule.from_config(schedule.get_config())
    assert clone.margin == schedule.margin and clone.mining == schedule.mining
    assert clone.value_at(4) == (0.4, "semi-hard")
    assert clone.loss is None and schedule.get_config()["loss"] is None
    # The loss it drives is part of the config: the clone drives an equal loss.
    loss = tfmetric.losses.TripletLoss(margin=0.3, mining="hard", distance="cosine")
    schedule = MiningSchedule(margin={0: 0.1}, loss=loss, verbose=1)
    config = schedule.get_config()
    clone = MiningSchedule.from_config(json.loads(json.dumps(config)))
    assert isinstance(clone.loss, tfmetric.losses.TripletLoss) and clone.loss is not loss
    assert clone.loss.get_config() == loss.get_config()
    assert clone.get_config() == config and clone.verbose == 1
    assert set(inspect.signature(MiningSchedule).parameters) == set(config)
    with pytest.raises(ValueError, match="function"):
        MiningSchedule(margin=lambda epoch: 0.1).get_config()


def _np_triplet_reference(x_emb, y, margin, mode):
    """Per-anchor hard/easy triplet terms (float64), averaged over anchors with both."""
    d = np.sqrt(((x_emb[:, None] - x_emb[None]) ** 2).sum(-1))
    terms = []
    for a in range(len(y)):
        pos = (y == y[a]) & (np.arange(len(y)) != a)
        neg = y != y[a]
        if not pos.any() or not neg.any():
            continue
        if mode == "hard":
            terms.append(max(d[a, pos].max() - d[a, neg].min() + margin, 0.0))
        else:
            terms.append(max(d[a, pos].min() - d[a, neg].max() + margin, 0.0))
    return float(np.mean(terms))


class CountingTripletLoss(tfmetric.losses.TripletLoss):
    """Counts the traces of its calls (a Python side effect runs once per trace)."""

    traces = 0

    def __call__(self, y_true, y_pred, sample_weight=None):
        CountingTripletLoss.traces += 1
        return super().__call__(y_true, y_pred, sample_weight)


def test_curriculum_drives_online_mining_and_margin_without_retracing():
    x, y = _data()
    CountingTripletLoss.traces = 0
    loss = CountingTripletLoss(margin=0.1, mining="easy")
    model = _frozen_model(loss, jit_compile=True)
    schedule = MiningSchedule(
        margin={0: 0.1, 2: 0.5}, mining={0: "easy", 1: "hard", 2: "easy", 3: "semi-hard"}
    )
    traces_after = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: traces_after.append(CountingTripletLoss.traces)
    )
    losses = model.fit(
        x, y, batch_size=12, epochs=4, verbose=0, shuffle=False, callbacks=[schedule, probe]
    ).history["loss"]
    emb = keras.ops.convert_to_numpy(model(x)).astype(np.float64)
    expected = [
        _np_triplet_reference(emb, y, 0.1, "easy"),
        _np_triplet_reference(emb, y, 0.1, "hard"),
        _np_triplet_reference(emb, y, 0.5, "easy"),
        _expected(model, x, y, margin=0.5, mining="semi-hard"),
    ]
    assert len({round(v, 4) for v in expected}) == 4  # every step changes the loss
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)
    if keras.backend.backend() == "tensorflow":
        # Traced in the first epoch only: later steps read the variables.
        assert traces_after[0] >= 1 and traces_after == [traces_after[0]] * 4
    else:
        # JAX: the step reads only the model's state; each change of values retraces it.
        assert traces_after[0] >= 1 and traces_after[-1] > traces_after[0]
    assert schedule.history[-1] == (3, 0.5, "semi-hard")
    assert loss.get_config()["mining"] == "semi-hard" and loss.get_config()["margin"] == 0.5


@pytest.mark.tf_only  # offline mining runs the embedder inside tf.data
def test_curriculum_drives_offline_mining():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 6)
    x = np.stack([np.arange(24), rng.normal(size=24)], 1).astype("float32")  # column 0: index
    embedder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    emb = embedder.predict(x, verbose=0).astype(np.float64)
    d = np.sqrt(((emb[:, None] - emb[None]) ** 2).sum(-1))
    schedule = MiningSchedule(mining={0: "easy", 1: "hard"})
    ds = tfmetric.data.triplet_dataset(
        x, y, 8, seed=0, embedder=embedder, mining=schedule, refresh_every=1
    )

    def check(mode):
        for (a, p, n), _ in itertools.islice(ds, 3):
            for ia, ip, i_n in zip(
                *(t[:, 0].astype(int) for t in (a.numpy(), p.numpy(), n.numpy())), strict=True
            ):
                pos = (y == y[ia]) & (np.arange(24) != ia)
                neg = y != y[ia]
                want_p = d[ia, pos].min() if mode == "easy" else d[ia, pos].max()
                want_n = d[ia, neg].max() if mode == "easy" else d[ia, neg].min()
                np.testing.assert_allclose([d[ia, ip], d[ia, i_n]], [want_p, want_n], atol=1e-5)

    check("easy")
    schedule.assign(1)  # what `fit` does at the start of epoch 1
    check("hard")
    schedule.assign(0)
    check("easy")


@pytest.mark.tf_only  # offline mining runs the embedder inside tf.data
def test_offline_mode_change_applies_within_a_mined_chunk():
    # One iterator, chunks of 40 batches: a mode change in the middle of a chunk (or
    # while the next chunk is already mined) applies to the batches produced after it,
    # not only from the next chunk on. Batches already prefetched may keep the old mode.
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 6)
    x = np.stack([np.arange(24), rng.normal(size=24)], 1).astype("float32")
    embedder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    emb = embedder.predict(x, verbose=0).astype(np.float64)
    d = np.sqrt(((emb[:, None] - emb[None]) ** 2).sum(-1))
    schedule = MiningSchedule(mining={0: "easy", 1: "hard"})
    for make in (tfmetric.data.triplet_dataset, tfmetric.data.pair_dataset):
        schedule.assign(0)
        iterator = iter(make(x, y, 8, seed=0, embedder=embedder, mining=schedule,
                             refresh_every=40))

        def farthest_negatives(count, iterator=iterator, make=make):
            """Per batch: whether every negative is the anchor's farthest other-class sample."""
            out = []
            for _ in range(count):
                inputs, labels = next(iterator)
                if make is tfmetric.data.triplet_dataset:
                    anchors, others = inputs[0][:, 0], inputs[2][:, 0]
                else:
                    keep = labels.numpy() == 0
                    anchors, others = inputs[0][:, 0][keep], inputs[1][:, 0][keep]
                ia, i_n = np.asarray(anchors).astype(int), np.asarray(others).astype(int)
                want = np.array([d[a, y != y[a]].max() for a in ia])
                out.append(bool(np.allclose(d[ia, i_n], want, atol=1e-5)))
            return out

        assert all(farthest_negatives(3))  # easy: the farthest negative
        schedule.assign(1)
        farthest_negatives(12)  # what the pipeline had prefetched
        hard = farthest_negatives(6)  # still inside the first 40-batch chunk
        assert not any(hard)


@pytest.mark.tf_only  # offline mining runs the embedder inside tf.data
def test_one_schedule_for_offline_mining_and_a_margin_loss():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 5)
    x = (rng.normal(size=(20, 3)) + y[:, None]).astype("float32")
    embedder = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    schedule = MiningSchedule(margin={0: 0.1, 1: 0.4}, mining={0: "easy", 1: "semi-hard"})
    data = tfmetric.data.triplet_dataset(
        x, y, 8, seed=0, embedder=embedder, mining=schedule, refresh_every=2
    )
    model = tfmetric.models.TripletModel(embedder)
    loss = tfmetric.losses.TripletMarginLoss(margin=0.1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, jit_compile=True)
    history = model.fit(data, steps_per_epoch=3, epochs=2, verbose=0, callbacks=[schedule])
    assert np.all(np.isfinite(history.history["loss"]))
    assert schedule.history == [(0, 0.1, "easy"), (1, 0.4, "semi-hard")]
    assert float(schedule.margin_variable.numpy()) == pytest.approx(0.4)
    assert schedule.MODES[int(schedule.mining_variable.numpy())] == "semi-hard"


def test_offline_schedule_bad_input():
    x, y = _data()
    embedder = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="offline mining"):
        tfmetric.data.triplet_dataset(
            x, y, embedder=embedder, mining=MiningSchedule(mining={0: "easy", 2: "all"})
        )
    with pytest.raises(ValueError, match="without a `mining` schedule"):
        tfmetric.data.pair_dataset(x, y, embedder=embedder, mining=MiningSchedule(margin={0: 1.0}))
    with pytest.raises(ValueError, match="mining"):
        MiningSchedule(mining={0: "hardest"})


_SCHEDULE_LABELS = np.repeat(np.arange(3), 4)


@functools.cache
def _scheduled_functions():
    """The loss and its gradient compiled once with the mode and margin as tensors.

    What the bound variables give a training step: every mode below runs the
    same compiled functions, the mode chosen at run time.
    """

    def scheduled_fn(e, margin, mining):
        return keras.ops.sum(
            tfmetric.losses.triplet_loss(_SCHEDULE_LABELS, e, margin=margin, mining=mining)
        )

    per_anchor = backend_ops.jit(
        lambda e, margin, mining: tfmetric.losses.triplet_loss(
            _SCHEDULE_LABELS, e, margin=margin, mining=mining
        )
    )
    return backend_ops.jit(backend_ops.gradient_function(scheduled_fn)), per_anchor


@pytest.mark.parametrize("mode", tfmetric.losses.triplet.MINING_MODES)
def test_scheduled_mode_has_the_values_and_gradients_of_the_fixed_mode(mode):
    rng = np.random.default_rng(4)
    labels = _SCHEDULE_LABELS
    embeddings = rng.normal(size=(12, 3)).astype("float32")
    code = np.int32(tfmetric.losses.triplet.MINING_MODES.index(mode))

    def fixed_fn(e):
        return keras.ops.sum(tfmetric.losses.triplet_loss(labels, e, margin=2.0, mining=mode))

    scheduled_step, per_anchor_fn = _scheduled_functions()
    fixed, fixed_grad = backend_ops.jit(backend_ops.gradient_function(fixed_fn))(embeddings)
    scheduled, scheduled_grad = scheduled_step(embeddings, np.float32(2.0), code)
    fixed, scheduled, fixed_grad, scheduled_grad = (
        keras.ops.convert_to_numpy(t) for t in (fixed, scheduled, fixed_grad, scheduled_grad)
    )
    np.testing.assert_allclose(scheduled, fixed, rtol=1e-6, atol=1e-6)
    per_anchor = per_anchor_fn(embeddings, np.float32(2.0), code)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(per_anchor),
        keras.ops.convert_to_numpy(
            tfmetric.losses.triplet_loss(labels, embeddings, margin=2.0, mining=mode)
        ),
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_allclose(scheduled_grad, fixed_grad, rtol=1e-5, atol=1e-6)
    assert np.abs(fixed_grad).sum() > 0
