"""Every class registered under the Keras package "tfmetric" round-trips its configuration.

One table builds an instance of each registered class; a test checks that the table covers the
registry, so a new class must be added here. Each instance's `get_config` holds every constructor
argument, survives JSON and `from_config` unchanged, and layers, losses and models also survive
a `.keras` file (the same outputs after loading).
"""

import inspect
import json

import keras
import numpy as np
import pytest

import tfmetric

DIM = 4


def _embedder(units=DIM):
    return keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(units)])


def _fitted_mahalanobis():
    sample = np.random.default_rng(0).normal(size=(20, DIM))
    return tfmetric.distances.FittedMahalanobis.fit(sample)


def _built(layer):
    layer.build((None, DIM))
    return layer


# name -> a function building an instance with arguments other than the defaults where cheap.
FACTORIES = {
    # distances
    "Distance": tfmetric.distances.Distance,
    "Euclidean": tfmetric.distances.Euclidean,
    "SquaredEuclidean": tfmetric.distances.SquaredEuclidean,
    "Cosine": tfmetric.distances.Cosine,
    "InnerProduct": tfmetric.distances.InnerProduct,
    "Manhattan": tfmetric.distances.Manhattan,
    "Minkowski": lambda: tfmetric.distances.Minkowski(p=3.0),
    "Jaccard": lambda: tfmetric.distances.Jaccard(weighted=True),
    "FittedMahalanobis": _fitted_mahalanobis,
    "LearnedDistance": lambda: tfmetric.layers.Mahalanobis(units=2).as_distance(),
    # losses
    "TripletLoss": lambda: tfmetric.losses.TripletLoss(margin=0.3, mining="hard"),
    "ContrastiveLoss": lambda: tfmetric.losses.ContrastiveLoss(margin=0.7),
    "CircleLoss": lambda: tfmetric.losses.CircleLoss(margin=0.3, gamma=64.0),
    "LiftedStructureLoss": lambda: tfmetric.losses.LiftedStructureLoss(margin=0.5),
    "MultiSimilarityLoss": lambda: tfmetric.losses.MultiSimilarityLoss(alpha=3.0),
    "NPairsLoss": lambda: tfmetric.losses.NPairsLoss(distance="cosine"),
    "NTXentLoss": lambda: tfmetric.losses.NTXentLoss(temperature=0.2),
    "SupervisedContrastiveLoss": lambda: tfmetric.losses.SupervisedContrastiveLoss(temperature=0.3),
    "SoftNearestNeighborLoss": lambda: tfmetric.losses.SoftNearestNeighborLoss(temperature=2.0),
    "AnchorTripletLoss": lambda: tfmetric.losses.AnchorTripletLoss(margin=0.2),
    "PNLoss": lambda: tfmetric.losses.PNLoss(margin=0.5),
    "InBatchSoftmaxLoss": lambda: tfmetric.losses.InBatchSoftmaxLoss(symmetric=True),
    "PairContrastiveLoss": lambda: tfmetric.losses.PairContrastiveLoss(margin=0.5),
    "TripletMarginLoss": lambda: tfmetric.losses.TripletMarginLoss(margin=0.4, squared=True),
    "addons.ContrastiveLoss": lambda: tfmetric.addons.ContrastiveLoss(margin=0.5),
    "addons.LiftedStructLoss": lambda: tfmetric.addons.LiftedStructLoss(margin=0.5),
    "addons.NpairsLoss": tfmetric.addons.NpairsLoss,
    "addons.NpairsMultilabelLoss": tfmetric.addons.NpairsMultilabelLoss,
    "addons.TripletHardLoss": lambda: tfmetric.addons.TripletHardLoss(margin=0.5, soft=True),
    "addons.TripletSemiHardLoss": lambda: tfmetric.addons.TripletSemiHardLoss(margin=0.5),
    # layers
    "ProxyHead": lambda: tfmetric.layers.ProxyHead(3),
    "ArcFace": lambda: tfmetric.layers.ArcFace(3, margin=0.3, scale=16.0),
    "CosFace": lambda: tfmetric.layers.CosFace(3, margin=0.2, scale=16.0),
    "SubCenterArcFace": lambda: tfmetric.layers.SubCenterArcFace(3, centers=2, scale=16.0),
    "NormalizedSoftmax": lambda: tfmetric.layers.NormalizedSoftmax(3, temperature=0.1),
    "ProxyAnchor": lambda: tfmetric.layers.ProxyAnchor(3, margin=0.2),
    "ProxyNCA": lambda: tfmetric.layers.ProxyNCA(3, scale=4.0),
    "Mahalanobis": lambda: _built(tfmetric.layers.Mahalanobis(units=2, squared=True)),
    "WeightedL1": lambda: _built(tfmetric.layers.WeightedL1()),
    "PairedDistance": lambda: tfmetric.layers.PairedDistance("cosine"),
    "InBatchLogits": lambda: tfmetric.layers.InBatchLogits(temperature=0.2),
    "CrossBatchMemory": lambda: tfmetric.layers.CrossBatchMemory(memory_size=5, dim=DIM),
    # models
    "SiameseModel": lambda: tfmetric.models.SiameseModel(_embedder(), distance="cosine"),
    "TripletModel": lambda: tfmetric.models.TripletModel(_embedder(), distance="cosine"),
    "ProxyModel": lambda: tfmetric.models.ProxyModel(_embedder(), tfmetric.layers.ProxyNCA(3)),
    "TwoTowerModel": lambda: tfmetric.models.TwoTowerModel(_embedder(), _embedder()),
    "CrossBatchMemoryModel": lambda: tfmetric.models.CrossBatchMemoryModel(_embedder(), 6),
    "MomentumContrastModel": lambda: tfmetric.models.MomentumContrastModel(
        _embedder(), queue_size=8, momentum=0.9
    ),
    # callbacks
    "MiningSchedule": lambda: tfmetric.callbacks.MiningSchedule(margin={0: 0.1, 2: 0.3}),
    # indexes
    "ExactIndex": lambda: tfmetric.index.ExactIndex("cosine", query_chunk_size=8),
    "ApproximateIndex": lambda: tfmetric.index.ApproximateIndex("cosine", nlist=2, nprobe=1),
}

# Public classes of these kinds that are not registered, and why.
NOT_REGISTERED = {
    tfmetric.index.Index: "abstract base of the indexes (no search of its own)",
    tfmetric.callbacks.RetrievalEvaluation: "holds query and gallery data, not a configuration",
}


def _registered(classes=True):
    """The classes (or the functions) registered under "tfmetric", by name without the package."""
    prefix = "tfmetric>"
    return {
        name[len(prefix) :]: obj
        for name, obj in keras.saving.get_custom_objects().items()
        if name.startswith(prefix) and inspect.isclass(obj) == classes
    }


def _public_classes():
    kinds = (
        keras.layers.Layer,
        keras.losses.Loss,
        keras.callbacks.Callback,
        tfmetric.distances.Distance,
        tfmetric.index.Index,
    )
    modules = ("distances", "losses", "layers", "models", "callbacks", "index", "addons")
    found = set()
    for module_name in modules:
        module = getattr(tfmetric, module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, kinds):
                found.add(obj)
    return found


def test_every_public_class_is_registered_and_in_the_table():
    registered = _registered()
    assert sorted(FACTORIES) == sorted(registered)
    for name, cls in registered.items():
        assert keras.saving.get_registered_name(cls) == f"tfmetric>{name}"
    unregistered = _public_classes() - set(registered.values())
    assert unregistered == set(NOT_REGISTERED)


def test_registered_functions_round_trip_by_name():
    functions = _registered(classes=False)
    assert functions  # the TensorFlow Addons functional losses
    for name, function in functions.items():
        serialized = keras.saving.serialize_keras_object(function)
        assert keras.saving.deserialize_keras_object(_json(serialized)) is function, name


# Constructor arguments that are not configuration, and why.
NOT_IN_CONFIG = {
    ("SiameseModel", "head"): "a deprecated alias of `scorer`",
    ("MiningSchedule", "loss"): "the live loss object it drives; a rebuilt one drives model.loss",
}


def _init_arguments(name, cls):
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {
        p.name
        for p in parameters
        if p.name != "self"
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        and (name, p.name) not in NOT_IN_CONFIG
    }


def _json(config):
    return json.loads(json.dumps(config, sort_keys=True))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_config_holds_every_argument_and_round_trips(name):
    obj = FACTORIES[name]()
    cls = type(obj)
    assert _registered()[name] is cls
    config = _json(obj.get_config())
    assert _init_arguments(name, cls) <= set(config), f"{name} config lacks arguments"
    rebuilt = cls.from_config(config)
    assert type(rebuilt) is cls
    assert _json(rebuilt.get_config()) == config
    # Through Keras' own serialisation, by registered name, as a .keras file stores it.
    serialized = _json(keras.saving.serialize_keras_object(obj))
    assert serialized["registered_name"] == f"tfmetric>{name}"
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is cls
    assert _json(again.get_config()) == config


def _inputs(n=6):
    return np.random.default_rng(1).normal(size=(n, DIM)).astype("float32")


def _labels(n=6):
    return np.array([0, 0, 1, 1, 2, 2][:n], "int64")


LAYER_CALLS = {
    "ProxyHead": None,  # a base: no loss of its own
    "ArcFace": "head",
    "CosFace": "head",
    "SubCenterArcFace": "head",
    "NormalizedSoftmax": "head",
    "ProxyAnchor": "head",
    "ProxyNCA": "head",
    "Mahalanobis": "pair",
    "WeightedL1": "pair",
    "PairedDistance": "pair",
    "InBatchLogits": "pair",
    "CrossBatchMemory": None,  # its state round-trips in tests/models/test_cross_batch_memory.py
}


@pytest.mark.parametrize("name", [n for n, call in LAYER_CALLS.items() if call])
def test_layer_keras_file_gives_the_same_outputs(name, tmp_path):
    layer = FACTORIES[name]()
    x1, x2 = _inputs(), _inputs()[::-1].copy()
    if LAYER_CALLS[name] == "head":
        inputs = [keras.Input((DIM,)), keras.Input((), dtype="int64")]
        feed = [x1, _labels()]
    else:
        inputs = [keras.Input((DIM,)), keras.Input((DIM,))]
        feed = [x1, x2]
    model = keras.Model(inputs, layer(*inputs))
    for variable in model.trainable_variables:  # not the initial values: weights must be saved
        variable.assign(variable + np.random.default_rng(2).uniform(0.1, 0.2, variable.shape))
    before = keras.ops.convert_to_numpy(model(feed))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(feed)), before, rtol=1e-6)


LOSSES = [
    name
    for name, cls in _registered().items()
    if issubclass(cls, keras.losses.Loss) and not name.startswith("addons.Npairs")
] + ["addons.NpairsLoss"]


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_losses_survive_a_keras_file(tmp_path):
    """Each loss, compiled into a model, comes back from a `.keras` file with its config."""
    for name in sorted(set(LOSSES)):
        loss = FACTORIES[name]()
        model = _embedder()
        model.compile(loss=loss)
        path = tmp_path / "model.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded.loss) is type(loss), name
        assert _json(loaded.loss.get_config()) == _json(loss.get_config()), name


MODEL_FEEDS = {
    "SiameseModel": lambda: (_inputs(), _inputs()[::-1].copy()),
    "TripletModel": lambda: (_inputs(), _inputs()[::-1].copy(), _inputs() * 2.0),
    "ProxyModel": _inputs,
    "TwoTowerModel": lambda: {"query": _inputs(), "candidate": _inputs()[::-1].copy()},
    "CrossBatchMemoryModel": _inputs,
    "MomentumContrastModel": _inputs,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODEL_FEEDS))
def test_model_keras_file_gives_the_same_outputs(name, tmp_path):
    model = FACTORIES[name]()
    feed = MODEL_FEEDS[name]()
    before = keras.tree.map_structure(keras.ops.convert_to_numpy, model(feed))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert _json(loaded.get_config()) == _json(model.get_config())
    after = keras.tree.map_structure(keras.ops.convert_to_numpy, loaded(feed))
    keras.tree.map_structure(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), after, before
    )
