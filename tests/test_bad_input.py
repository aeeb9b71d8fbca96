"""Bad input to the public API: a ValueError/TypeError naming the argument, never a silent NaN.

Covers losses, heads, models, data generators, metrics, index, export and the
trainer's flags; file-writing entry points leave nothing half-written behind.
"""

import inspect
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfmetric
from tfmetric.export import parity
from tfmetric.losses.batch import InBatchLoss

RNG = np.random.default_rng(0)
EMB = RNG.normal(size=(8, 4)).astype("float32")
LAB = np.arange(8) % 4
NAN_EMB = np.where(np.arange(32).reshape(8, 4) == 5, np.nan, EMB).astype("float32")
INF_EMB = np.where(np.arange(32).reshape(8, 4) == 7, np.inf, EMB).astype("float32")

IN_BATCH_LOSSES = sorted(
    {
        cls
        for cls in vars(tfmetric.losses).values()
        if inspect.isclass(cls) and issubclass(cls, InBatchLoss) and cls is not InBatchLoss
    },
    key=lambda cls: cls.__name__,
)
HEADS = [
    tfmetric.layers.ArcFace,
    tfmetric.layers.CosFace,
    tfmetric.layers.SubCenterArcFace,
    tfmetric.layers.NormalizedSoftmax,
    tfmetric.layers.ProxyAnchor,
    tfmetric.layers.ProxyNCA,
]


def _raises(fn, argument, types=(ValueError, TypeError)):
    with pytest.raises(types) as error:
        fn()
    assert argument in str(error.value), str(error.value)


def test_every_in_batch_loss_is_covered():
    names = {cls.__name__ for cls in IN_BATCH_LOSSES}
    assert {"TripletLoss", "ContrastiveLoss", "MultiSimilarityLoss", "CircleLoss"} <= names
    assert {"SupervisedContrastiveLoss", "NTXentLoss", "LiftedStructureLoss"} <= names
    assert {"NPairsLoss", "SoftNearestNeighborLoss"} <= names


LOSS_CALLS = {
    "rank_1_embeddings": (lambda loss: loss(LAB, EMB[:, 0]), "y_pred"),
    "rank_3_embeddings": (lambda loss: loss(LAB, EMB[:, :, None]), "y_pred"),
    "length_mismatch": (lambda loss: loss(LAB[:5], EMB), "y_true"),
    "float_labels": (lambda loss: loss(LAB + 0.5, EMB), "y_true"),
    "bool_labels": (lambda loss: loss(LAB > 1, EMB), "y_true"),
    "2d_labels": (lambda loss: loss(np.stack([LAB, LAB], 1), EMB), "y_true"),
    "integer_embeddings": (lambda loss: loss(LAB, (EMB * 10).astype("int32")), "y_pred"),
    "string_embeddings": (lambda loss: loss(LAB, EMB.astype(str)), "y_pred"),
    "empty_batch": (lambda loss: loss(LAB[:0], EMB[:0]), "y_pred"),
    "nan_embeddings": (lambda loss: loss(LAB, NAN_EMB), "y_pred"),
    "inf_embeddings": (lambda loss: loss(LAB, INF_EMB), "y_pred"),
}


@pytest.mark.parametrize("cls", IN_BATCH_LOSSES, ids=lambda cls: cls.__name__)
def test_in_batch_loss_calls(cls):
    loss = cls()
    for case, (call, argument) in LOSS_CALLS.items():
        with pytest.raises((ValueError, TypeError)) as error:
            call(loss)
        assert argument in str(error.value), (case, str(error.value))


@pytest.mark.parametrize("cls", IN_BATCH_LOSSES, ids=lambda cls: cls.__name__)
def test_in_batch_loss_arguments(cls):
    parameters = inspect.signature(cls).parameters
    _raises(lambda: cls(distance="no-such-distance"), "distance")
    _raises(lambda: cls(cross_replica="no"), "cross_replica")
    for name in ("margin", "temperature", "alpha", "beta", "gamma"):
        if name not in parameters:
            continue
        allow_zero = name == "margin"
        # TF Similarity's losses take `margin=None` for the soft margin.
        allow_none = name == "margin" and cls in (
            tfmetric.losses.AnchorTripletLoss,
            tfmetric.losses.PNLoss,
        )
        bad_values = [-1.0, float("nan"), float("inf"), "1"]
        bad_values += ([] if allow_none else [None]) + ([] if allow_zero else [0.0])
        for bad in bad_values:
            _raises(lambda name=name, bad=bad: cls(**{name: bad}), name)
    if "mining" in parameters:
        _raises(lambda: cls(mining="hardest"), "mining")


def test_functional_losses_validate_like_the_classes():
    _raises(lambda: tfmetric.losses.triplet_loss(LAB, EMB, margin=-1), "margin")
    _raises(
        lambda: tfmetric.losses.supervised_contrastive_loss(LAB, EMB, temperature=0), "temperature"
    )
    _raises(
        lambda: tfmetric.losses.soft_nearest_neighbor_loss(LAB, EMB, temperature=0), "temperature"
    )
    _raises(lambda: tfmetric.losses.contrastive_loss(LAB, NAN_EMB), "embeddings")
    _raises(lambda: tfmetric.losses.triplet_loss(LAB, EMB, mining="x"), "mining")


MARGIN_FUNCTIONS = {
    "triplet_loss": lambda margin: tfmetric.losses.triplet_loss(LAB, EMB, margin=margin),
    "pair_contrastive_loss": lambda margin: tfmetric.losses.pair_contrastive_loss(
        np.array([1, 0]), np.array([0.5, 0.2]), margin=margin
    ),
    "triplet_margin_loss": lambda margin: tfmetric.losses.triplet_margin_loss(
        EMB[:6].reshape(2, 3, 4), margin=margin
    ),
}


@pytest.mark.parametrize("name", sorted(MARGIN_FUNCTIONS))
def test_functional_margins_are_numbers_or_tensors(name):
    # A string reached TensorFlow's Cast ("Cast string to float is not supported").
    loss = MARGIN_FUNCTIONS[name]
    for bad in ("0.2", None, [0.2], np.array("0.2"), np.array([0.2, 0.3]), True):
        with pytest.raises(ValueError, match="`margin` must be a number"):
            loss(bad)
    with pytest.raises(ValueError, match="`margin` must be a number"):
        loss(object())
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with pytest.raises(ValueError, match="`margin` must be a number"):
            loss(tf.constant("0.2"))  # a string tensor
    expected = np.asarray(loss(0.2))
    for good in (np.float32(0.2), np.array(0.2), keras.ops.convert_to_tensor(0.2)):
        np.testing.assert_allclose(loss(good), expected, rtol=1e-6)
    np.testing.assert_allclose(loss(keras.Variable(0.2)), expected, rtol=1e-6)


BOOL_OPTIONS = [
    (lambda v: tfmetric.losses.TripletLoss(soft_margin=v), "soft_margin"),
    (lambda v: tfmetric.losses.triplet_loss(LAB, EMB, soft_margin=v), "soft_margin"),
    (lambda v: tfmetric.losses.TripletMarginLoss(squared=v), "squared"),
    (
        lambda v: tfmetric.losses.triplet_margin_loss(EMB[:6].reshape(2, 3, 4), squared=v),
        "squared",
    ),
    (lambda v: tfmetric.layers.ArcFace(3, easy_margin=v), "easy_margin"),
    (lambda v: tfmetric.layers.SubCenterArcFace(3, easy_margin=v), "easy_margin"),
    (lambda v: tfmetric.layers.Mahalanobis(squared=v), "squared"),
]


@pytest.mark.parametrize("index", range(len(BOOL_OPTIONS)))
def test_bool_options_reject_truthy_values(index):
    # bool("no") is True: these options silently switched on.
    make, name = BOOL_OPTIONS[index]
    for bad in ("no", 1, None, np.array([True])):
        with pytest.raises(TypeError, match=f"`{name}` must be a bool"):
            make(bad)
    for good in (True, False):
        make(good)


def test_pair_and_triplet_margin_losses():
    _raises(lambda: tfmetric.losses.PairContrastiveLoss(margin=-1), "margin")
    _raises(lambda: tfmetric.losses.TripletMarginLoss(margin=-1), "margin")
    _raises(lambda: tfmetric.losses.PairContrastiveLoss()(np.ones(4), np.ones((4, 3))), "y_pred")


EMPTY_BATCHES = {
    # Each returned an empty tensor of shape (0,) instead of a loss or an error.
    "PairContrastiveLoss": (
        lambda: tfmetric.losses.PairContrastiveLoss()(np.zeros(0), np.zeros(0)),
        "`y_pred` is empty",
    ),
    "pair_contrastive_loss": (
        lambda: tfmetric.losses.pair_contrastive_loss(np.zeros(0), np.zeros(0)),
        "`distances` is empty",
    ),
    "TripletMarginLoss": (
        lambda: tfmetric.losses.TripletMarginLoss()(None, np.zeros((0, 3, 4))),
        "`y_pred` is empty",
    ),
    "triplet_margin_loss": (
        lambda: tfmetric.losses.triplet_margin_loss(np.zeros((0, 3, 4))),
        "`y_pred` is empty",
    ),
    "triplet_margin_loss_no_features": (
        lambda: tfmetric.losses.triplet_margin_loss(np.zeros((2, 3, 0))),
        "`y_pred` must have at least one feature",
    ),
    "Mahalanobis": (
        lambda: tfmetric.layers.Mahalanobis()(np.zeros((0, 4)), np.zeros((0, 4))),
        "`x1` is empty",
    ),
    "WeightedL1": (
        lambda: tfmetric.layers.WeightedL1()(np.zeros((0, 4)), np.zeros((0, 4))),
        "`x1` is empty",
    ),
    "WeightedL1.logits": (
        lambda: tfmetric.layers.WeightedL1().logits(np.zeros((0, 4)), np.zeros((0, 4))),
        "`x1` is empty",
    ),
}


@pytest.mark.parametrize("name", sorted(EMPTY_BATCHES))
def test_empty_batches_of_pair_and_triplet_losses_and_scorers(name):
    call, message = EMPTY_BATCHES[name]
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("cls", HEADS, ids=lambda cls: cls.__name__)
def test_head_arguments_and_calls(cls):
    for bad in (0, 1, 2.5, "3", None):
        _raises(lambda bad=bad: cls(bad), "num_classes")
    parameters = inspect.signature(cls).parameters
    for name in ("scale", "temperature", "alpha"):
        if name in parameters:
            for bad in (0.0, -1.0, float("nan"), float("inf")):
                _raises(lambda name=name, bad=bad: cls(3, **{name: bad}), name)
    if "margin" in parameters:
        _raises(lambda: cls(3, margin=-0.1), "margin")
    head = cls(4)
    _raises(lambda: head(EMB, LAB + 4), "labels")
    _raises(lambda: head(EMB, LAB - 1), "labels")
    _raises(lambda: head(EMB, LAB + 0.5), "labels")
    _raises(lambda: head(EMB, LAB[:3]), "labels")
    _raises(lambda: head(EMB[:, 0], LAB), "embeddings")
    _raises(lambda: head(EMB.astype("int32"), LAB), "embeddings")
    _raises(lambda: head(NAN_EMB, LAB), "embeddings")
    _raises(lambda: head(INF_EMB, LAB), "embeddings")


def test_learned_distances_and_models():
    _raises(lambda: tfmetric.layers.Mahalanobis()(EMB, EMB[:, :3]), "x1")
    embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    _raises(lambda: tfmetric.models.ProxyModel("embedder", tfmetric.layers.CosFace(3)), "embedder")
    _raises(lambda: tfmetric.models.ProxyModel(embedder, "head"), "head")
    _raises(lambda: tfmetric.models.SiameseModel(None), "embedder")
    _raises(lambda: tfmetric.models.SiameseModel(embedder, scorer="mlp"), "scorer")
    _raises(lambda: tfmetric.models.SiameseModel(embedder, distance="nope"), "distance")
    _raises(lambda: tfmetric.models.TripletModel(embedder, distance="nope"), "distance")


def test_data_generators():
    data = tfmetric.data
    cb = data.class_balanced_dataset
    _raises(lambda: cb(EMB, LAB, classes_per_batch=1, samples_per_class=2), "classes_per_batch")
    _raises(lambda: cb(EMB, LAB, classes_per_batch=5, samples_per_class=2), "classes_per_batch")
    _raises(lambda: cb(EMB, LAB, classes_per_batch=2, samples_per_class=0), "samples_per_class")
    _raises(lambda: cb(EMB, LAB, classes_per_batch=2.5, samples_per_class=2), "classes_per_batch")
    _raises(lambda: cb(EMB, LAB[:5], classes_per_batch=2, samples_per_class=2), "y")
    _raises(lambda: cb(EMB, LAB + 0.5, classes_per_batch=2, samples_per_class=2), "y")
    _raises(lambda: cb(EMB[:0], LAB[:0], classes_per_batch=2, samples_per_class=2), "empty")
    _raises(lambda: data.pair_dataset(EMB, LAB, batch_size=0), "batch_size")
    _raises(lambda: data.pair_dataset(EMB, LAB, positive_fraction=1.5), "positive_fraction")
    _raises(
        lambda: data.pair_dataset(EMB, LAB, positive_fraction=float("nan")), "positive_fraction"
    )
    _raises(lambda: data.triplet_dataset(EMB, LAB, batch_size=0), "batch_size")
    _raises(lambda: data.triplet_dataset(EMB, LAB, mining="hardest"), "mining")
    _raises(lambda: data.triplet_dataset(EMB, LAB, refresh_every=0), "refresh_every")


def test_metrics():
    m = tfmetric.metrics
    for fn in (m.map_at_r, m.precision_at_1, m.r_precision, m.mean_average_precision):
        _raises(lambda fn=fn: fn(NAN_EMB, LAB), "query")
        _raises(lambda fn=fn: fn(INF_EMB, LAB), "query")
        _raises(lambda fn=fn: fn(EMB[:0], LAB[:0]), "query")
        _raises(lambda fn=fn: fn(EMB[:, 0], LAB), "query")
        _raises(lambda fn=fn: fn(EMB, LAB[:3]), "query_labels")
        _raises(lambda fn=fn: fn(EMB, LAB + 0.5), "query_labels")
        _raises(lambda fn=fn: fn(EMB.astype(str), LAB), "query")
        _raises(lambda fn=fn: fn(EMB, LAB, EMB[:, :3], LAB), "gallery")
    for k in (0, -1, 1.5):
        _raises(lambda k=k: m.recall_at_k(EMB, LAB, k=k), "k")
    same, scores = np.array([1, 0, 1, 0]), np.array([0.1, 0.2, 0.3, 0.4])
    _raises(lambda: m.tar_at_far(same, scores, far=2.0), "far")
    _raises(lambda: m.roc_auc(same, np.array([0.1, np.nan, 0.3, 0.4])), "scores")
    _raises(lambda: m.roc_auc(same[:3], scores), "scores")
    _raises(lambda: m.cmc_curve(EMB, LAB, max_rank=0), "max_rank")
    _raises(lambda: m.n_way_k_shot_accuracy(EMB, LAB, n_way=0), "n_way")
    _raises(lambda: m.clustering_scores(NAN_EMB, LAB), "embeddings")


def test_index(tmp_path):
    index_cls = tfmetric.index.ExactIndex
    _raises(lambda: index_cls(distance="nope"), "distance")
    _raises(lambda: index_cls(query_chunk_size=0), "query_chunk_size")
    _raises(lambda: index_cls().search(EMB, 2), "add")
    empty = index_cls()
    _raises(lambda: empty.add(NAN_EMB, LAB), "embeddings")
    _raises(lambda: empty.add(EMB[:0], LAB[:0]), "embeddings")
    _raises(lambda: empty.add(EMB[0], LAB[:1]), "embeddings")
    _raises(lambda: empty.add(EMB, LAB[:2]), "labels")
    assert len(empty) == 0  # failed adds leave the index untouched
    index = index_cls()
    index.add(EMB, LAB)
    for k in (0, -1):
        _raises(lambda k=k: index.search(EMB, k), "k")
    _raises(lambda: index.search(EMB[:, :3], 2), "queries")
    _raises(lambda: index.search(NAN_EMB, 2), "queries")
    _raises(lambda: index.search(EMB[:0], 2), "queries")
    with pytest.raises(OSError):
        index.save(tmp_path / "missing" / "index.npz")
    assert not (tmp_path / "missing").exists()
    assert os.listdir(tmp_path) == []


def test_export_rejects_bad_input_before_writing(tmp_path):
    embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    output = tmp_path / "models"
    export = tfmetric.export.export_for_serving
    _raises(lambda: export(embedder, output, top_k=0), "top_k")
    _raises(lambda: export(embedder, output, distance="nope"), "distance")
    _raises(lambda: export(embedder, output, tflite=("int3",)), "tflite")
    _raises(lambda: export("does-not-exist.keras", output), "model", FileNotFoundError)
    assert not output.exists() or os.listdir(output) == []
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith((".tmp", "tmp"))]
    assert leftovers == []


def test_failed_report_write_leaves_no_file(tmp_path):
    path = tmp_path / "parity.json"
    parity.write_report({"ok": 1.0}, path)
    before = path.read_text()
    with pytest.raises(TypeError):
        parity.write_report({"value": object()}, path)
    assert path.read_text() == before  # the old report survives intact
    assert sorted(os.listdir(tmp_path)) == ["parity.json"]


def _run_trainer(tmp_path, *flags):
    model_dir = tmp_path / "run"
    command = [sys.executable, "-m", "trainers.train", "--dataset=digits", "--backbone=mlp"]
    command += ["--epochs=1", "--steps_per_epoch=1", "--noexport", f"--model_dir={model_dir}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        command + list(flags), capture_output=True, text=True, env=env, cwd=root, timeout=300
    )
    return result, model_dir


TRAINER_FLAGS = [
    ("--margin=-1", "margin"),
    ("--loss=no_such_loss", "--loss"),
    ("--embedding_dim=0", "--embedding_dim"),
]


@pytest.mark.slow
@pytest.mark.parametrize("flag, name", TRAINER_FLAGS)
def test_trainer_flags(tmp_path, flag, name):
    result, model_dir = _run_trainer(tmp_path, flag)
    assert result.returncode == 2, result.stderr[-2000:]
    assert name in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not model_dir.exists() or os.listdir(model_dir) == []


def test_json_of_loss_configs_is_plain():
    for cls in IN_BATCH_LOSSES:
        json.dumps(cls().get_config())
