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
    return float(np.mean(tfmetric.losses.triplet_loss(y, model(x), **kwargs)))


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
    emb = [np.asarray(embedder(t)) for t in (a, p, n)]
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
    x, y = _data()
    model = _frozen_model(tfmetric.losses.PairContrastiveLoss())
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
    with pytest.raises(ValueError, match="function"):
        MiningSchedule(margin=lambda epoch: 0.1).get_config()
