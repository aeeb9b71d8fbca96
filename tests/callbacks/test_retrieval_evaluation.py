import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmetric
from tfmetric.callbacks import RetrievalEvaluation


def _data(n=48, d=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n // classes)
    x = (rng.normal(size=(classes, d))[y] * 2 + rng.normal(size=(n, d))).astype("float32")
    return x, y


def _model(learning_rate=0.0):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=tfmetric.losses.TripletLoss(mining="hard"),
    )
    return model


def _reference_map_at_r(embeddings, labels):
    """Leave-one-out MAP@R from the definition (numpy, pessimistic ties)."""
    d = np.sqrt(((embeddings[:, None].astype(np.float64) - embeddings[None]) ** 2).sum(-1))
    values = []
    for i in range(len(labels)):
        refs = [j for j in range(len(labels)) if j != i]
        rel = np.array([labels[j] == labels[i] for j in refs], int)
        order = sorted(range(len(refs)), key=lambda t: (d[i, refs[t]], rel[t]))
        rel = rel[order]
        r = rel.sum()
        precision = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        values.append(np.sum(precision * rel[:r]) / r)
    return float(np.mean(values))


def test_early_stopping_monitors_map_at_r_in_fit():
    x, y = _data()
    model = _model(learning_rate=0.0)  # frozen weights: the metric never improves
    history = model.fit(
        x,
        y,
        epochs=6,
        batch_size=16,
        verbose=0,
        callbacks=[
            RetrievalEvaluation((x, y), metrics=["map_at_r", "precision_at_1", "recall_at_k"]),
            keras.callbacks.EarlyStopping(monitor="val_map_at_r", mode="max", patience=1),
        ],
    )
    logged = history.history
    assert len(logged["loss"]) == 2  # stopped after one epoch without improvement
    assert set(logged) >= {
        "val_map_at_r",
        "val_precision_at_1",
        "val_recall_at_1",
        "val_recall_at_5",
    }
    expected = _reference_map_at_r(model.predict(x, verbose=0), y)
    np.testing.assert_allclose(logged["val_map_at_r"], [expected, expected], rtol=1e-5)


def test_model_checkpoint_monitors_map_at_r(tmp_path):
    x, y = _data(seed=1)
    model = _model(learning_rate=0.05)
    path = str(tmp_path / "best.keras")
    history = model.fit(
        x,
        y,
        epochs=4,
        batch_size=48,
        verbose=0,
        callbacks=[
            RetrievalEvaluation((x, y), metrics="map_at_r"),
            keras.callbacks.ModelCheckpoint(
                path, monitor="val_map_at_r", mode="max", save_best_only=True
            ),
        ],
    )
    assert len(history.history["val_map_at_r"]) == 4
    assert (tmp_path / "best.keras").exists()
    assert all(0.0 <= v <= 1.0 for v in history.history["val_map_at_r"])


def test_every_and_last_epoch_with_dataset_and_gallery():
    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x[::2], y[::2])).batch(10)
    callback = RetrievalEvaluation(
        dataset, gallery_data=(x[1::2], y[1::2]), metrics=["precision_at_1"], every=2
    )
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append("val_precision_at_1" in logs)

    _model().fit(x, y, epochs=5, verbose=0, callbacks=[callback, Spy()])
    assert seen == [False, True, False, True, True]  # epochs 2, 4 and the last


def test_matches_evaluate_retrieval_with_gallery_and_similarity():
    x, y = _data(seed=2)
    model = _model()
    model.fit(x, y, epochs=1, verbose=0)
    order = np.random.default_rng(0).permutation(len(y))  # every class in both halves
    x, y = x[order], y[order]
    callback = RetrievalEvaluation(
        (x[:20], y[:20]), gallery_data=(x[20:], y[20:]), distance="inner_product",
        metrics=["mean_reciprocal_rank"],
    )  # fmt: skip
    callback.set_model(model)
    e = model.predict(x, verbose=0)
    # Reference: reciprocal rank of the first same-label gallery item by decreasing inner product.
    s = e[:20].astype(np.float64) @ e[20:].T.astype(np.float64)
    rr = []
    for i in range(20):
        rel = y[20:] == y[i]
        first = s[i][rel].max()
        ahead = np.sum(s[i][~rel] >= first)
        rr.append(1.0 / (1 + ahead))
    np.testing.assert_allclose(callback.evaluate()["mean_reciprocal_rank"], np.mean(rr), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"validation_data": np.zeros((4, 6))}, "`validation_data` must be"),
        ({"validation_data": (np.zeros((4, 6)), np.zeros(3, int))}, "has 4 inputs"),
        ({"metrics": ["accuracy"]}, "`metrics`"),
        ({"every": 0}, "`every`"),
        ({"k": 0}, "`k`"),
        # Labels are checked when the callback is made, not after the first epoch of training.
        ({"validation_data": (np.zeros((4, 6)), np.array(list("abab")))}, "integer class labels"),
        ({"validation_data": (np.zeros((4, 6)), np.arange(4) + 0.5)}, "non-integer values"),
        ({"validation_data": (np.zeros((4, 6)), np.zeros((4, 2), int))}, r"shape \(n,\) or"),
        ({"gallery_data": (np.zeros((4, 6)), np.zeros(4, bool))}, "`gallery_data` labels"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"validation_data": (np.zeros((4, 6)), np.zeros(4, int))}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        RetrievalEvaluation(**args)


def test_integral_float_and_column_labels_are_accepted():
    x, y = _data(n=16)
    model = _model()
    scores = RetrievalEvaluation((x, y))
    scores.set_model(model)
    expected = scores.evaluate()
    for labels in (y.astype("float32"), y[:, None]):
        callback = RetrievalEvaluation((x, labels))
        callback.set_model(model)
        assert callback.evaluate() == pytest.approx(expected)


def _twin(kind, embedder):
    if kind == "siamese":
        return tfmetric.models.SiameseModel(embedder, input_shape=(6,)), 2
    return tfmetric.models.TripletModel(embedder, input_shape=(6,)), 3


@pytest.mark.parametrize("kind", ["siamese", "triplet"])
@pytest.mark.parametrize("bare_layer", [False, True])
def test_twin_models_are_scored_on_their_embedder(kind, bare_layer):
    # A twin model's output compares inputs; the callback scores its shared embedder.
    keras.utils.set_random_seed(0)
    x, y = _data()
    embedder = (
        keras.layers.Dense(4)
        if bare_layer
        else keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    )
    model, branches = _twin(kind, embedder)
    loss = tfmetric.losses.PairContrastiveLoss() if kind == "siamese" else None
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss or "mse")
    targets = np.ones(len(x)) if kind == "siamese" else np.zeros((len(x), 3, 4))
    datasets = [(x, y), tf.data.Dataset.from_tensor_slices((x, y)).batch(10)]
    for validation_data in datasets:
        history = model.fit(
            [x] * branches,
            targets,
            epochs=1,
            verbose=0,
            callbacks=[RetrievalEvaluation(validation_data)],
        )
        embeddings = keras.ops.convert_to_numpy(model.embedder(x))
        assert history.history["val_map_at_r"][0] == pytest.approx(
            _reference_map_at_r(embeddings, y), abs=1e-9
        )


def test_two_tower_model_logits_are_refused():
    # Its (B, B) logits looked like embeddings and gave meaningless metrics.
    x, y = _data(n=16)
    tower = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model = tfmetric.models.TwoTowerModel(tower, other)
    model.compile(optimizer="sgd", loss=tfmetric.losses.InBatchSoftmaxLoss())
    inputs = {"query": x, "candidate": x}
    with pytest.raises(ValueError, match="TwoTowerModel outputs in-batch logits"):
        model.fit(
            inputs, epochs=1, verbose=0, callbacks=[RetrievalEvaluation((inputs, y))]
        )
