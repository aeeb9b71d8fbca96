"""Fuzz: the heads and layers of `tfmetric.layers` and the models of `tfmetric.models`.

The contract: a `ValueError`/`TypeError` naming the argument, or finite
values; cosine heads are scale-free, so their values at any magnitude from
1e-30 to 1e30 equal those of the unscaled batch.
"""

import math

import keras
import numpy as np
import pytest
from fuzz_strategies import assert_names, examples
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_losses import FAULTS, HOSTILE_VALUES, labelled_batches

import tfmetric
from tfmetric import layers

NUM_CLASSES = 3
HEADS = {
    "ArcFace": lambda **kw: layers.ArcFace(NUM_CLASSES, **kw),
    "CosFace": lambda **kw: layers.CosFace(NUM_CLASSES, **kw),
    "SubCenterArcFace": lambda **kw: layers.SubCenterArcFace(NUM_CLASSES, **kw),
    "NormalizedSoftmax": lambda **kw: layers.NormalizedSoftmax(NUM_CLASSES, **kw),
    "ProxyAnchor": lambda **kw: layers.ProxyAnchor(NUM_CLASSES, **kw),
    "ProxyNCA": lambda **kw: layers.ProxyNCA(NUM_CLASSES, **kw),
}
HEAD_ARGUMENTS = [
    ("ArcFace", "margin"), ("ArcFace", "scale"), ("CosFace", "margin"), ("CosFace", "scale"),
    ("SubCenterArcFace", "margin"), ("SubCenterArcFace", "scale"),
    ("NormalizedSoftmax", "temperature"), ("ProxyAnchor", "margin"), ("ProxyAnchor", "alpha"),
    ("ProxyNCA", "scale"),
]
_BUILT = {}


def _head(name, dim):
    """One head per (kind, embedding size), built once: examples reuse its weights."""
    if (name, dim) not in _BUILT:
        head = HEADS[name]()
        head.build((None, dim))
        _BUILT[name, dim] = head
    return _BUILT[name, dim]


@pytest.mark.parametrize("name", sorted(HEADS))
@examples(6)
@given(data=st.data())
def test_head_on_a_faulty_batch_names_the_argument(name, data):
    fault = data.draw(st.sampled_from(sorted(FAULTS) + ["label_out_of_range"]), label="fault")
    labels, embeddings = data.draw(
        labelled_batches(None if fault == "label_out_of_range" else fault), label="batch"
    )
    if fault == "label_out_of_range":
        labels = labels + data.draw(st.sampled_from([-NUM_CLASSES, NUM_CLASSES]))
    dim = embeddings.shape[-1] if np.ndim(embeddings) == 2 and embeddings.shape[-1] else 2
    head = _head(name, dim)
    with pytest.raises((ValueError, TypeError)) as error:
        head(embeddings, labels)
    assert_names(error.value, FAULTS.get(fault, "labels"))


@pytest.mark.parametrize("name", sorted(HEADS))
@examples(6)
@given(batch=labelled_batches(min_dim=2), exponent=st.integers(-30, 30))
def test_head_values_are_finite_and_scale_free(name, batch, exponent):
    """(With D >= 2: in one dimension every cosine is +-1, where ArcFace is ill-conditioned.)"""
    labels, embeddings = batch
    head = _head(name, embeddings.shape[1])
    values = np.asarray(head(embeddings * np.float32(10.0**exponent), labels))
    assert values.shape == (len(labels),) and np.all(np.isfinite(values)), values
    np.testing.assert_allclose(values, np.asarray(head(embeddings, labels)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "argument"), HEAD_ARGUMENTS)
def test_every_hostile_head_argument_is_rejected_or_gives_finite_values(name, argument):
    rng = np.random.default_rng(0)
    labels, embeddings = np.array([0, 1, 2, 0]), rng.normal(size=(4, 3)).astype("float32")
    for value in HOSTILE_VALUES + [True, "1", None]:
        try:
            head = HEADS[name](**{argument: value})
        except (ValueError, TypeError) as error:
            assert_names(error, argument)
            continue
        assert isinstance(value, float) and math.isfinite(value) and abs(value) <= 1e30, value
        result = np.asarray(head(embeddings, labels))
        assert np.all(np.isfinite(result)), (value, result)


@pytest.mark.parametrize("name", sorted(HEADS))
@given(num_classes=st.one_of(st.integers(-3, 1), st.floats(), st.booleans(), st.text(max_size=2)))
def test_head_num_classes_is_checked(name, num_classes):
    cls = type(HEADS[name]())
    with pytest.raises((ValueError, TypeError)) as error:
        cls(num_classes)
    assert_names(error.value, "num_classes")


@examples(6)
@given(
    dims=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    rows=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    poison=st.sampled_from([None, "x", "y"]),
    layer=st.sampled_from(["Mahalanobis", "WeightedL1", "PairedDistance"]),
)
def test_pairwise_layers_name_their_arguments(dims, rows, poison, layer):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows[0], dims[0])).astype("float32")
    y = rng.normal(size=(rows[1], dims[1])).astype("float32")
    if poison == "x":
        x[0, 0] = np.nan
    elif poison == "y":
        y[-1, -1] = np.inf
    layer = getattr(layers, layer)()
    if poison is None and dims[0] == dims[1] and rows[0] == rows[1]:
        assert np.all(np.isfinite(np.asarray(layer(x, y))))
        return
    with pytest.raises(ValueError) as error:
        layer(x, y)
    message = str(error.value)
    assert "NaN" in message or "`" in message, message


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda v: layers.InBatchLogits(temperature=v), "temperature"),
        (lambda v: layers.InBatchLogits(max_logit_scale=v), "max_logit_scale"),
        (lambda v: layers.CrossBatchMemory(memory_size=v, dim=2), "memory_size"),
        (lambda v: layers.CrossBatchMemory(memory_size=4, dim=v), "dim"),
        (lambda v: tfmetric.models.TwoTowerModel(_tower(), _tower(), temperature=v), "temperature"),
        (lambda v: tfmetric.models.MomentumContrastModel(_tower(), temperature=v), "temperature"),
        (lambda v: tfmetric.models.MomentumContrastModel(_tower(), momentum=v), "momentum"),
        (lambda v: tfmetric.models.MomentumContrastModel(_tower(), queue_size=v), "queue_size"),
    ],
    ids=["InBatchLogits.temperature", "InBatchLogits.max_logit_scale", "CBM.memory_size",
         "CBM.dim", "TwoTower.temperature", "MoCo.temperature", "MoCo.momentum", "MoCo.queue_size"],
)
@examples(6)
@given(value=st.sampled_from(HOSTILE_VALUES + [True, "1", None, 0, -3]))
def test_layer_and_model_arguments(build, argument, value):
    try:
        build(value)
    except (ValueError, TypeError) as error:
        assert_names(error, argument)
        return
    assert isinstance(value, (int, float)) and not isinstance(value, bool)
    assert math.isfinite(value) and 0 < value <= 1e30, value


def _tower(dim=3):
    return keras.Sequential([keras.Input((dim,)), keras.layers.Dense(2)])


MODELS = {
    "SiameseModel": lambda embedder, **kw: tfmetric.models.SiameseModel(embedder, **kw),
    "TripletModel": lambda embedder, **kw: tfmetric.models.TripletModel(embedder, **kw),
    "ProxyModel": lambda embedder, **kw: tfmetric.models.ProxyModel(
        embedder, layers.ArcFace(NUM_CLASSES), **kw
    ),
    "TwoTowerModel": lambda embedder, **kw: tfmetric.models.TwoTowerModel(embedder, _tower(), **kw),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@given(embedder=st.sampled_from([None, "dense", 3, keras.layers.Dense]))
def test_model_construction_names_a_bad_embedder(name, embedder):
    with pytest.raises((ValueError, TypeError)) as error:
        MODELS[name](embedder)
    message = str(error.value)
    assert any(f"`{arg}`" in message for arg in ("embedder", "query_tower", "encoder")), message


@pytest.mark.parametrize("name", ["SiameseModel", "TripletModel"])
@given(distance=st.sampled_from(["nope", 3, {"class_name": "X"}, None]))
def test_model_construction_names_a_bad_distance(name, distance):
    with pytest.raises((ValueError, TypeError)) as error:
        MODELS[name](_tower(), distance=distance)
    assert_names(error.value, "distance")


@pytest.fixture(scope="module")
def siamese():
    return tfmetric.models.SiameseModel(_tower())


@examples(6)
@given(exponent=st.integers(-30, 30), rows=st.integers(1, 4), poison=st.booleans())
def test_siamese_model_call_is_finite_or_names_the_nan(siamese, exponent, rows, poison):
    rng = np.random.default_rng(rows)
    a = rng.normal(size=(rows, 3)).astype("float32") * np.float32(10.0**exponent)
    b = rng.normal(size=(rows, 3)).astype("float32") * np.float32(10.0**exponent)
    if poison:
        a[0, 0] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            siamese([a, b])
        return
    assert np.all(np.isfinite(np.asarray(siamese([a, b]))))
