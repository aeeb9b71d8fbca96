"""TFLite variants run in LiteRT; the parity report matches independent numbers."""

import json
import os

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import tfmetric

VARIANTS = ["fp32", "fp16", "dynamic_int8", "int8"]


@pytest.fixture(scope="module")
def exported(vector_model, tmp_path_factory):
    model, x, y = vector_model
    result = tfmetric.export.export_for_serving(
        model,
        tmp_path_factory.mktemp("tflite") / "models",
        name="vec",
        gallery={"inputs": x, "labels": y},
        distance="cosine",
        top_k=5,
        tflite=",".join(VARIANTS),
        parity=tfmetric.export.ParityOptions(latency_runs=2),
    )
    return result, model, x, y


def _run(path, **inputs):
    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    return runner(**inputs)


def _precision_at_1(embeddings, labels):
    """Leave-one-out precision@1 under the cosine distance."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    distances = 1.0 - unit @ unit.T
    np.fill_diagonal(distances, np.inf)
    return float(np.mean(labels[np.argmin(distances, axis=1)] == labels))


@pytest.mark.slow
def test_every_variant_runs_in_litert(exported):
    result, model, x, y = exported
    assert sorted(result.tflite) == sorted(
        f"{kind}_{variant}" for kind in ("embedder", "retrieve") for variant in VARIANTS
    )
    expected = np.asarray(model(x))
    tolerance = {"fp32": 1e-5, "fp16": 1e-2, "dynamic_int8": 1e-1, "int8": 0.5}
    sizes = {}
    for variant in VARIANTS:
        path = result.tflite[f"embedder_{variant}"]
        assert path.startswith(result.path) and os.path.isfile(path)
        sizes[variant] = os.path.getsize(path)
        got = _run(path, inputs=x)["embeddings"]
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=tolerance[variant])
        cosine = (
            np.sum(got * expected, 1)
            / np.linalg.norm(got, axis=1)
            / np.linalg.norm(expected, axis=1)
        )
        assert cosine.min() > 0.99, variant
    assert sizes["fp16"] < sizes["fp32"] and sizes["int8"] < sizes["fp32"]

    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    order = np.argsort(1.0 - unit[:6] @ unit.T, axis=1, kind="stable")[:, :5]
    out = _run(result.tflite["retrieve_fp32"], inputs=x[:6])
    np.testing.assert_array_equal(out["indices"], order)
    np.testing.assert_array_equal(out["ids"], order)
    np.testing.assert_array_equal(out["labels"], y[order])
    # Quantised retrieval still finds each query itself first.
    out = _run(result.tflite["retrieve_int8"], inputs=x[:6])
    assert out["ids"].shape == (6, 5)
    np.testing.assert_array_equal(out["labels"][:, 0], y[:6])


@pytest.mark.slow
def test_parity_report(exported):
    result, model, x, y = exported
    report = result.report
    with open(os.path.join(result.path, "parity.json")) as f:
        assert json.load(f) == json.loads(json.dumps(report))
    assert report["samples"] == len(x) and report["labelled"]
    assert list(report["runtimes"]) == ["saved_model", *VARIANTS]

    expected = np.asarray(model(x))
    assert report["keras"]["precision_at_1"] == pytest.approx(_precision_at_1(expected, y))
    for variant in VARIANTS:
        entry = report["runtimes"][variant]
        path = result.tflite[f"embedder_{variant}"]
        got = _run(path, inputs=x)["embeddings"]
        assert entry["max_abs_diff"] == pytest.approx(
            float(np.max(np.abs(got - expected))), rel=1e-4, abs=1e-7
        )
        assert entry["precision_at_1"] == pytest.approx(_precision_at_1(got, y))
        assert entry["size_bytes"] == os.path.getsize(path)
        assert entry["latency_ms_batch_1"] > 0 and entry["latency_ms_batch_32"] > 0
    # The parity targets, met by this small trained embedder.
    assert report["runtimes"]["saved_model"]["max_abs_diff"] <= 1e-5
    assert report["runtimes"]["fp16"]["map_at_r_drop"] <= 0.005
    assert report["runtimes"]["int8"]["map_at_r_drop"] <= 0.02
    assert report["passed"] is True
    table = tfmetric.export.format_report(report)
    assert all(name in table for name in ["keras", "saved_model", *VARIANTS])


def test_mixed_precision_model_is_exported_as_a_float32_copy(tmp_path):
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 8)
    x = (rng.normal(size=(4, 12))[y] * 3 + rng.normal(size=(32, 12))).astype("float32")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:  # the global policy stays mixed during the export, as in the main job
        model = keras.Sequential(
            [keras.Input((12,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(8)]
        )
        assert model.layers[0].compute_dtype == "bfloat16"
        result = tfmetric.export.export_for_serving(
            model, tmp_path, name="mixed", validation=(x, y), tflite="fp32,fp16,dynamic_int8",
            parity=tfmetric.export.ParityOptions(latency_runs=0),
        )  # fmt: skip
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.layers[0].dtype_policy.name == "mixed_bfloat16"  # the given model is unchanged
    assert result.metadata["precision"] == {"trained": "mixed_bfloat16", "exported": "float32"}
    # Independent reference: the model's (float32) weights in a float32 numpy forward pass.
    (w1, b1), (w2, b2) = [[v.numpy() for v in layer.weights] for layer in model.layers]
    expected = np.maximum(x @ w1 + b1, 0.0) @ w2 + b2
    serving = tf.saved_model.load(result.path).signatures["serving_default"]
    assert serving.structured_input_signature[1]["inputs"].dtype == tf.float32
    saved = serving(inputs=tf.constant(x))["embeddings"].numpy()
    assert saved.dtype == np.float32
    np.testing.assert_allclose(saved, expected, atol=1e-5)
    tolerance = {"fp32": 1e-5, "fp16": 2e-2, "dynamic_int8": 0.2}
    for variant, atol in tolerance.items():
        got = _run(result.tflite[f"embedder_{variant}"], inputs=x)["embeddings"]
        np.testing.assert_allclose(got, expected, atol=atol * np.abs(expected).max())


def test_mixed_precision_model_without_config_is_refused_before_writing(tmp_path):
    import keras

    class Wrapped(keras.Model):  # no get_config: Keras cannot rebuild it
        def __init__(self, layer):
            super().__init__()
            self.dense = layer

        def call(self, inputs):
            return self.dense(inputs)

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((4,))
        mixed = keras.Model(inputs, Wrapped(keras.layers.Dense(3))(inputs))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    with pytest.raises(ValueError, match=r"'mixed_bfloat16' policy; the export needs a float32"):
        tfmetric.export.export_for_serving(mixed, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # The same model in float32 needs no copy and exports as before.
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, Wrapped(keras.layers.Dense(3))(inputs))
    assert tfmetric.export.float32_copy(plain) is plain
    result = tfmetric.export.export_for_serving(
        plain, tmp_path / "out", parity=tfmetric.export.ParityOptions(latency_runs=0)
    )
    assert result.metadata["precision"]["trained"] == "float32"


@pytest.fixture(scope="module")
def small_saved_model(tmp_path_factory):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path_factory.mktemp("convert") / "embedder"
    tfmetric.export.save_embedder(path, model, (3,))
    return path


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"variant": 8}, TypeError, r"`variant` must be one of \['fp32'.*got 8"),
        ({"variant": ["int8"]}, TypeError, r"`variant` must be one of .*\(a string\)"),
        ({"variant": "int4"}, ValueError, r"`variant` must be one of .*got 'int4'"),
        ({"signature": 0}, TypeError, r"`signature` must be a signature name"),
        ({"signature": "retrieve"}, ValueError, r"`signature` 'retrieve' is not in the SavedModel"),
        ({"variant": "int8"}, ValueError, r"`int8` variant needs a `representative`"),
        (
            {"variant": "int8", "representative": "images/*.png"},
            TypeError,
            r"`representative` must be float model inputs",
        ),
        (
            {"variant": "int8", "representative": np.ones((4, 5))},
            ValueError,
            r"`representative` must have the shape \(n, 3\) .* got \(4, 5\)",
        ),
        (
            {"variant": "int8", "representative": np.full((4, 3), np.nan)},
            ValueError,
            r"`representative` holds NaN or Inf",
        ),
        (
            {"variant": "int8", "representative": {"x": np.ones((4, 3))}},
            ValueError,
            r"`representative` must have the signature's inputs \['inputs'\] as keys",
        ),
    ],
)
def test_convert_tflite_bad_arguments_are_named(small_saved_model, arguments, error, match):
    arguments = {"variant": "fp32", **arguments}
    with pytest.raises(error, match=match):
        tfmetric.export.convert_tflite(small_saved_model, **arguments)


def test_convert_tflite_bad_saved_model_dir_is_named(small_saved_model, tmp_path):
    convert = tfmetric.export.convert_tflite
    with pytest.raises(FileNotFoundError, match=r"`saved_model_dir` '.*missing' does not exist"):
        convert(tmp_path / "missing", "fp32")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"`saved_model_dir` '.*notes.txt' is a file"):
        convert(tmp_path / "notes.txt", "fp32")
    with pytest.raises(ValueError, match=r"is not a SavedModel directory \(it has no saved_model"):
        convert(tmp_path, "fp32")
    with pytest.raises(TypeError, match=r"`saved_model_dir` must be the path"):
        convert(None, "fp32")
    assert convert(small_saved_model, "fp32")[4:8] == b"TFL3"  # the valid call converts


@pytest.mark.tf_only  # SavedModel and TFLite export
@pytest.mark.parametrize("l2_normalize", [False, True])
def test_final_unit_normalization_keeps_a_zero_embedding_zero(tmp_path, l2_normalize):
    import keras

    w = np.array([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.25]], "float32")
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(2, activation="relu", use_bias=False)(inputs)
    model = keras.Model(inputs, keras.layers.UnitNormalization()(hidden))
    model.layers[1].set_weights([w])
    x = np.array([[0, 0, 0], [0, -1, 0], [1, 2, 3], [2, 0, 0.5]], "float32")
    features = np.maximum(x.astype("float64") @ w, 0.0)  # rows 0 and 1 are zero
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    expected = np.where(norms > 0, features / np.where(norms > 0, norms, 1.0), 0.0)
    assert np.count_nonzero(norms == 0) == 2
    path = tmp_path / "embedder"
    tfmetric.export.save_embedder(path, model, l2_normalize=l2_normalize)
    for variant in ("fp32", "fp16"):
        flatbuffer = tfmetric.export.convert_tflite(path, variant)
        runner = Interpreter(model_content=flatbuffer).get_signature_runner("serving_default")
        got = runner(inputs=x)["embeddings"]
        assert np.all(np.isfinite(got)), variant
        np.testing.assert_allclose(got, expected, atol=1e-3 if variant == "fp16" else 1e-6)


@pytest.mark.slow
def test_frozen_conversion_equals_the_saved_model_lowering(vector_model, tmp_path):
    """`convert_loaded` freezes the signature and names its inputs and outputs itself.

    TensorFlow's default conversion of a loaded signature (saving it to a
    temporary SavedModel, which names the inputs and outputs) is the reference:
    every output of every file is the same, under the same names.
    """
    import tensorflow as tf

    from tfmetric.export import tflite

    model, x, y = vector_model
    ids = np.array([f"item-{i}" for i in range(len(x))])
    result = tfmetric.export.export_for_serving(
        model,
        tmp_path / "models",
        gallery={"inputs": x, "labels": y, "ids": ids},
        validation=(x, y),
        verify=True,
        top_k=4,
        parity=tfmetric.export.ParityOptions(latency_runs=0),
    )
    loaded = tf.saved_model.load(result.path)
    feeds = {
        "serving_default": {"inputs": x[:7]},
        "retrieve": {"inputs": x[3:9]},
        "verify": {"x1": x[:9], "x2": x[9:18]},
    }
    cases = [("verify", v) for v in VARIANTS] + [("retrieve", "fp32"), ("retrieve", "int8")]
    cases.append(("serving_default", "dynamic_int8"))
    for signature, variant in cases:
        samples = {name: x for name in feeds[signature]}
        ours = tflite.convert_loaded(loaded, variant, signature, samples)
        lowered = tflite._converter(loaded, signature, variant, samples, frozen=False).convert()
        got, expected = Interpreter(model_content=ours), Interpreter(model_content=lowered)
        assert got.get_signature_list() == expected.get_signature_list()
        names = got.get_signature_list()["serving_default"]
        assert names["inputs"] == sorted(feeds[signature]), (signature, names)
        out = got.get_signature_runner("serving_default")(**feeds[signature])
        reference = expected.get_signature_runner("serving_default")(**feeds[signature])
        assert sorted(out) == sorted(reference) == names["outputs"]
        for key in reference:
            assert out[key].dtype == reference[key].dtype, (signature, variant, key)
            np.testing.assert_array_equal(
                out[key], reference[key], err_msg=f"{signature} {variant}"
            )
    np.testing.assert_array_equal(out["embeddings"].shape, (7, 8))
    retrieved = Interpreter(model_content=tflite.convert_loaded(loaded, "fp32", "retrieve"))
    found = retrieved.get_signature_runner("serving_default")(inputs=x[:3])
    np.testing.assert_array_equal(found["ids"][:, 0].astype(str), ids[:3])
    # A frozen file whose inputs do not carry the function's names is converted the other way.
    frozen = tflite._converter(loaded, "verify", "fp32", None, frozen=True).convert()
    assert tflite._with_signature(frozen, loaded.signatures["retrieve"]) is None
    assert tflite._with_signature(frozen, loaded.signatures["verify"])[4:8] == b"TFL3"
