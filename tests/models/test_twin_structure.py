"""The twin models are functional graphs around one shared tower."""

import io
import os
from contextlib import redirect_stdout

import keras
import numpy as np
import pytest

import tfmetric
from tfmetric.models import SiameseModel, TripletModel


def _embedder(name="tower"):
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)],
        name=name,
    )


@keras.saving.register_keras_serializable(package="tfmetric_tests")
class SubclassedTower(keras.Model):
    """An embedder without a `keras.Input`: its input shape is unknown until called."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


@keras.saving.register_keras_serializable(package="tfmetric_tests")
class WideHead(keras.layers.Layer):
    """Returns (B, 2): not one value per pair."""

    def call(self, e1, e2):
        return keras.ops.concatenate([e1[:, :1], e2[:, :1]], axis=1)


def _summary(model):
    text = io.StringIO()
    with redirect_stdout(text):
        model.summary()
    return text.getvalue()


def _rows(text):
    """The summary's layer rows, each with its wrapped lines joined (cells concatenated)."""
    rows, current = [], []
    for line in text.splitlines():
        if line.startswith(("├", "└")) and current:
            rows.append(" ".join(" ".join(current).split()))
            current = []
        elif line.startswith("│"):
            current.append(" ".join(cell.strip() for cell in line.strip("│").split("│")))
    return rows


@pytest.mark.parametrize(
    "make, names",
    [
        (lambda e: SiameseModel(e), ("x1", "x2")),
        (lambda e: TripletModel(e), ("anchor", "positive", "negative")),
    ],
    ids=["siamese", "triplet"],
)
def test_graph_shows_one_shared_tower(make, names):
    embedder = _embedder()
    model = make(embedder)
    assert model.embedder is embedder
    assert [t.name for t in model.inputs] == list(names)
    # One set of tower weights, however many branches use it.
    assert len(model.weights) == len(embedder.weights) == 4
    assert {id(v) for v in model.weights} == {id(v) for v in embedder.weights}
    towers = [layer for layer in model.layers if layer is embedder]
    assert len(towers) == 1
    text = _summary(model)
    assert text.count("tower (Sequential)") == 1
    rows = _rows(text)
    tower = next(row for row in rows if row.startswith("tower (Sequential)"))
    # The one tower row is connected to every branch input...
    assert all(f"{name}[0][0]" in tower for name in names)
    # ...and the next node reads its outputs, one call per branch.
    following = rows[rows.index(tower) + 1]
    assert all(f"tower[{i}][0]" in following for i in range(len(names)))
    assert f"Total params: {embedder.count_params()}" in text


def test_plot_model_draws_the_branches_into_the_tower():
    model = SiameseModel(_embedder(), distance="cosine")
    graph = keras.utils.model_to_dot(model)
    nodes = {
        node.get_name(): node.get("label") for node in graph.get_nodes() if node.get("label")
    }
    by_label = {}
    for name, label in nodes.items():
        for key in ("x1", "x2", "tower", "distance"):
            if f"<b>{key}</b> (" in label:
                by_label[key] = name
    assert set(by_label) == {"x1", "x2", "tower", "distance"}
    edges = {(e.get_source(), e.get_destination()) for e in graph.get_edges()}
    assert (by_label["x1"], by_label["tower"]) in edges
    assert (by_label["x2"], by_label["tower"]) in edges
    assert (by_label["tower"], by_label["distance"]) in edges


def test_training_updates_the_one_tower():
    embedder = _embedder()
    model = SiameseModel(embedder)
    before = [np.array(w) for w in embedder.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=tfmetric.losses.PairContrastiveLoss())
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(2, 8, 5)).astype("float32")
    model.fit([x1, x2], np.array([1, 0] * 4, "float32"), epochs=1, verbose=0)
    assert any(not np.allclose(a, keras.ops.convert_to_numpy(b)) for a, b in zip(before, embedder.weights, strict=True))
    expected = np.linalg.norm(keras.ops.convert_to_numpy(embedder(x1)) - keras.ops.convert_to_numpy(embedder(x2)), axis=1)
    np.testing.assert_allclose(model.predict([x1, x2], verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_subclassed_embedder_needs_input_shape(tmp_path):
    with pytest.raises(ValueError, match="input_shape"):
        SiameseModel(SubclassedTower())
    with pytest.raises(ValueError, match="input_shape"):
        TripletModel(SubclassedTower(), input_shape=5)
    model = TripletModel(SubclassedTower(), input_shape=(5,))
    x = np.random.default_rng(1).normal(size=(3, 5)).astype("float32")
    out = model.predict([x, x, x[::-1]], verbose=0)
    assert out.shape == (3, 3, 3)
    path = os.path.join(tmp_path, "triplet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict([x, x, x[::-1]], verbose=0), out, atol=1e-6)


def test_input_dtype_follows_the_embedder():
    embedder = keras.Sequential(
        [keras.Input((4,), dtype="uint8"), keras.layers.Rescaling(1 / 255), keras.layers.Dense(2)]
    )
    model = SiameseModel(embedder)
    assert [keras.backend.standardize_dtype(t.dtype) for t in model.inputs] == ["uint8"] * 2
    x = np.arange(12, dtype="uint8").reshape(3, 4)
    assert model.predict([x, x], verbose=0).shape == (3,)


def test_scorer_of_the_wrong_shape_is_an_error_at_construction():
    with pytest.raises(ValueError, match=r"`scorer` must return one value per pair.*\(None, 2\)"):
        SiameseModel(_embedder(), scorer=WideHead())


def test_multi_input_embedder_is_an_error():
    a, b = keras.Input((2,)), keras.Input((3,))
    embedder = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(ValueError, match="one input"):
        SiameseModel(embedder)


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.array([0, 1, 2, 1]), r"0 \(different\) or 1 \(same class\).*\[2\]"),
        (np.array([0.0, 0.5, 1.0, 1.0]), r"\[0\.5\]"),
        (np.array([0, -1, 1, 1]), r"\[-1\]"),
        (np.array([0.0, np.nan, 1.0, 1.0]), "nan"),
        (np.array(["a", "b", "a", "b"]), "numeric"),
    ],
)
def test_pair_labels_other_than_0_1_are_an_error_before_training(labels, match):
    embedder = _embedder()
    model = SiameseModel(embedder)
    model.compile(optimizer="sgd", loss=tfmetric.losses.PairContrastiveLoss())
    before = [np.array(w) for w in embedder.weights]
    x = np.ones((4, 5), "float32")
    with pytest.raises(ValueError, match=match):
        model.fit([x, x], labels, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="validation_data"):
        model.fit([x, x], np.ones(4), validation_data=([x, x], labels), verbose=0)
    with pytest.raises(ValueError, match=match):
        model.evaluate([x, x], labels, verbose=0)
    for a, b in zip(before, embedder.weights, strict=True):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))  # nothing trained
