"""The `verify` signature: Siamese scores and decisions, the trained distance, the plan."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmetric

QUIET = tfmetric.export.ParityOptions(latency_runs=0)

# Loads the SavedModel with TensorFlow alone (importing tfmetric raises) and
# calls the verify and retrieve signatures; writes the outputs to an .npz.
PLAIN_TF_SCRIPT = textwrap.dedent(
    """
    import json, sys

    class BlockTfmetric:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tfmetric":
                raise ImportError("tfmetric must not be needed to serve")

    sys.meta_path.insert(0, BlockTfmetric())
    import numpy as np
    import tensorflow as tf

    export_dir, data_path, out_path = sys.argv[1:]
    data = np.load(data_path, allow_pickle=True)
    model = tf.saved_model.load(export_dir)
    out = {"signatures": np.array(sorted(model.signatures))}
    verify = model.signatures["verify"](x1=tf.constant(data["x1"]), x2=tf.constant(data["x2"]))
    images = model.signatures["verify_images"](
        images1=tf.constant(list(data["png1"])), images2=tf.constant(list(data["png2"]))
    )
    retrieve = model.signatures["retrieve"](inputs=tf.constant(data["x1"]))
    for prefix, outputs in (("verify", verify), ("verify_images", images), ("retrieve", retrieve)):
        for key, value in outputs.items():
            out[f"{prefix}/{key}"] = value.numpy()
    with open(model.metadata.asset_path.numpy().decode()) as f:
        out["metadata"] = np.array(json.dumps(json.load(f)))
    out["tfmetric_imported"] = np.array("tfmetric" in sys.modules)
    np.savez(out_path, **out)
    """
)


def _weighted_l1(head, e1, e2):
    """Koch's head from its definition: sigmoid(b - sum_k |a_k| |e1_k - e2_k|)."""
    a = np.abs(np.asarray(head.feature_weights))
    b = float(np.asarray(head.bias))
    return 1.0 / (1.0 + np.exp(-(b - np.sum(a * np.abs(e1 - e2), axis=-1))))


def _best_accuracy(same, scores):
    """The best accuracy of `score >= t` over every threshold (brute force)."""
    candidates = np.concatenate([scores, [np.inf]])
    return max(np.mean((scores >= t) == same) for t in candidates)


@pytest.fixture(scope="module")
def image_siamese(image_model, image_validation, tmp_path_factory):
    """A Siamese image model with a WeightedL1 scorer, exported with a gallery."""
    embedder, x, y = image_model
    keras.utils.set_random_seed(1)
    head = tfmetric.layers.WeightedL1()
    model = tfmetric.models.SiameseModel(embedder, scorer=head)
    model.predict((x[:2], x[:2]), verbose=0)
    head.feature_weights.assign(np.linspace(0.5, 2.0, 6).astype("float32"))
    head.bias.assign(1.0)
    root = tmp_path_factory.mktemp("verify")
    x_val, y_val = image_validation
    result = tfmetric.export.export_for_serving(
        model,
        root / "models",
        name="pairs",
        gallery={"inputs": x, "labels": y},
        top_k=3,
        validation=(x_val, y_val),
        parity=QUIET,
    )
    return result, model, x_val, y_val, x, root


@pytest.mark.slow
def test_verify_in_a_process_without_tfmetric(image_siamese):
    result, model, x, y, gallery_inputs, root = image_siamese
    embedder, head = model.embedder, model.scorer
    x1, x2 = x, np.roll(x, 3, axis=0)

    def png(batch):
        return np.array(
            [tf.io.encode_png(np.round(i * 255).astype("uint8")).numpy() for i in batch],
            dtype=object,
        )

    np.savez(root / "pairs.npz", x1=x1, x2=x2, png1=png(x1), png2=png(x2))
    (root / "serve.py").write_text(PLAIN_TF_SCRIPT)
    subprocess.run(
        [sys.executable, str(root / "serve.py"), result.path, str(root / "pairs.npz"),
         str(root / "out.npz")],
        check=True,
        cwd=root,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )  # fmt: skip
    out = np.load(root / "out.npz")
    assert not out["tfmetric_imported"]
    metadata = json.loads(str(out["metadata"]))
    signatures = ["serving_default", "embed_images", "retrieve", "retrieve_images", "verify",
                  "verify_images"]  # fmt: skip
    # One list: the plan's, the SavedModel's and the metadata's.
    assert result.signatures == signatures == metadata["signatures"]
    assert sorted(out["signatures"]) == sorted(signatures)

    e1, e2 = np.asarray(embedder(x1)), np.asarray(embedder(x2))
    expected = _weighted_l1(head, e1, e2)  # the learned head, not a plain distance
    keras_scores = np.asarray(model.predict((x1, x2), verbose=0))
    np.testing.assert_allclose(keras_scores, expected, rtol=1e-5, atol=1e-6)
    threshold = metadata["verify"]["threshold"]
    assert metadata["verify"]["kind"] == "siamese_scorer"
    assert metadata["verify"]["is_match"] == "score >= threshold"
    for prefix in ("verify", "verify_images"):
        np.testing.assert_allclose(out[f"{prefix}/score"], keras_scores, atol=1e-5)
        np.testing.assert_array_equal(out[f"{prefix}/is_match"], keras_scores >= threshold)

    # Retrieval ranks the gallery by the head's weighted L1 distance.
    gallery = np.asarray(embedder(gallery_inputs))
    scores = _weighted_l1(head, e1[:, None], gallery[None])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(out["retrieve/indices"], order)
    assert metadata["distance_source"] == "scorer"


def test_threshold_is_calibrated_on_the_validation_pairs(image_siamese, replay_warmup):
    result, model, x, y, _, _ = image_siamese
    assert sorted(replay_warmup(result.path, "pairs")) == sorted(result.signatures)
    calibration = result.metadata["verify"]["calibration"]
    # The validation pairs: every sample with two others of its label and two of others.
    first, second, same = tfmetric.export.label_pairs(y)
    assert calibration["pairs"] == len(same) == 4 * len(y)
    assert np.all(first != second)
    np.testing.assert_array_equal(same, y[first] == y[second])
    np.testing.assert_array_equal(np.bincount(first), np.full(len(y), 4))
    assert calibration["matching_pairs"] == int(same.sum()) == 2 * len(y)

    scores = _weighted_l1(model.scorer, np.asarray(model.embedder(x[first])),
                          np.asarray(model.embedder(x[second])))  # fmt: skip
    threshold = result.metadata["verify"]["threshold"]
    best = _best_accuracy(same, scores)
    assert calibration["accuracy"] == pytest.approx(best)
    assert np.mean((scores >= threshold) == same) == pytest.approx(best)
    assert np.min(np.abs(scores - threshold)) > 1e-6  # no pair sits on the threshold
    section = result.report["verify"]
    assert section["pairs"] == len(same)
    assert section["runtimes"]["saved_model"]["agreement"] == 1.0


@pytest.fixture(scope="module")
def tflite_siamese(siamese_model, tmp_path_factory):
    model, x, y = siamese_model
    return tfmetric.export.export_for_serving(
        model,
        tmp_path_factory.mktemp("verify_tflite"),
        name="koch",
        validation=tfmetric.export.ValidationData(x, y),
        tflite=["fp32", "fp16", "int8"],
        parity=QUIET,
    )


@pytest.mark.slow
def test_tflite_verify_models_and_parity(tflite_siamese, siamese_model):
    from ai_edge_litert.interpreter import Interpreter

    result = tflite_siamese
    model, x, y = siamese_model
    assert sorted(result.tflite) == sorted(
        f"{kind}_{v}" for kind in ("embedder", "verify") for v in ("fp32", "fp16", "int8")
    )
    x1, x2 = x, x[::-1].copy()
    expected = _weighted_l1(model.scorer, np.asarray(model.embedder(x1)),
                            np.asarray(model.embedder(x2)))  # fmt: skip
    threshold = result.metadata["verify"]["threshold"]
    runner = Interpreter(model_path=result.tflite["verify_fp32"]).get_signature_runner()
    out = runner(x1=x1, x2=x2)
    np.testing.assert_allclose(out["score"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["is_match"], expected >= threshold)

    section = result.report["verify"]
    print(tfmetric.export.format_report(result.report))
    # The validation blobs are new classes: well above chance; every runtime decides as Keras.
    assert section["keras"]["accuracy"] > 0.8
    assert section["runtimes"]["saved_model"]["agreement"] >= 0.995
    assert section["runtimes"]["fp32"]["agreement"] >= 0.995
    assert section["runtimes"]["fp16"]["agreement"] >= 0.995
    assert section["runtimes"]["int8"]["agreement"] >= 0.98
    assert section["targets"]["int8"] == {"agreement": 0.98}
    # The report's figures match an independent run of the int8 file.
    first, second, same = tfmetric.export.label_pairs(y)
    keras_scores = _weighted_l1(model.scorer, np.asarray(model.embedder(x[first])),
                                np.asarray(model.embedder(x[second])))  # fmt: skip
    int8 = Interpreter(model_path=result.tflite["verify_int8"]).get_signature_runner()
    got = int8(x1=x[first], x2=x[second])
    agreement = np.mean(got["is_match"] == (keras_scores >= threshold))
    assert section["runtimes"]["int8"]["agreement"] == pytest.approx(agreement)
    assert section["runtimes"]["int8"]["accuracy"] == pytest.approx(
        np.mean(got["is_match"] == same)
    )
    assert result.report["passed"] is True


def test_siamese_without_head_verifies_with_its_distance(vector_model, tmp_path):
    embedder, x, y = vector_model
    model = tfmetric.models.SiameseModel(embedder, distance="cosine")
    model.predict((x[:2], x[:2]), verbose=0)
    result = tfmetric.export.export_for_serving(
        model, tmp_path, name="cos", validation=(x, y), parity=QUIET
    )
    assert result.metadata["distance"] == "cosine"
    assert result.metadata["verify"]["kind"] == "siamese_distance"
    assert result.metadata["verify"]["is_match"] == "score <= threshold"
    verify = tf.saved_model.load(result.path).signatures["verify"]
    x1, x2 = x[:10], x[10:20]
    out = verify(x1=tf.constant(x1), x2=tf.constant(x2))
    e1, e2 = np.asarray(embedder(x1)), np.asarray(embedder(x2))
    cosine = 1.0 - np.sum(e1 * e2, 1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    np.testing.assert_allclose(out["score"].numpy(), cosine, atol=1e-5)
    threshold = result.metadata["verify"]["threshold"]
    np.testing.assert_array_equal(out["is_match"].numpy(), cosine <= threshold)


def test_triplet_model_exports_the_distance_of_its_loss(vector_model, tmp_path):
    embedder, x, _ = vector_model
    model = tfmetric.models.TripletModel(embedder)  # its own distance: euclidean
    model.compile(optimizer="adam", loss=tfmetric.losses.TripletMarginLoss(distance="cosine"))
    model.predict((x[:2], x[:2], x[:2]), verbose=0)
    assert tfmetric.export.trained_distance(model) == (tfmetric.distances.Cosine(), "loss")
    model.save(tmp_path / "triplets.keras")
    gallery = np.asarray(embedder(x))
    result = tfmetric.export.export_for_serving(
        str(tmp_path / "triplets.keras"),
        tmp_path / "out",
        gallery={"embeddings": gallery},
        top_k=5,
        parity=QUIET,
    )
    assert result.metadata["distance"] == "cosine"
    assert result.metadata["distance_source"] == "loss"
    assert "verify" not in result.signatures  # not a Siamese model
    out = tf.saved_model.load(result.path).signatures["retrieve"](inputs=tf.constant(x[:4]))
    q = np.asarray(embedder(x[:4]))
    unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    cosine = 1.0 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ unit.T
    np.testing.assert_array_equal(
        out["indices"].numpy(), np.argsort(cosine, axis=1, kind="stable")[:, :5]
    )


def test_validation_in_memory_equals_the_npz_file(vector_model, tmp_path):
    model, x, y = vector_model
    np.savez(tmp_path / "validation.npz", inputs=x, labels=y)
    reports = [
        tfmetric.export.export_for_serving(
            model, tmp_path / "out", name=f"m{i}", validation=validation, parity=QUIET
        ).report
        for i, validation in enumerate(
            [(x, y), tfmetric.export.ValidationData(x, y), str(tmp_path / "validation.npz")]
        )
    ]
    assert reports[0]["labelled"] and reports[0]["samples"] == len(x)
    for report in reports[1:]:
        assert report["runtimes"] == reports[0]["runtimes"]
        assert report["keras"]["map_at_r"] == reports[0]["keras"]["map_at_r"]


def test_verify_on_request_and_bad_input(vector_model, tmp_path):
    model, x, y = vector_model
    plan = tfmetric.export.plan_export(
        model, validation=(x, y), verify=tfmetric.export.VerifyOptions(threshold=0.7),
        distance="euclidean",
    )  # fmt: skip
    assert plan.signature_names == ["serving_default", "verify"]
    assert plan.verify.threshold == 0.7 and plan.verify.kind == "distance"
    e1, e2 = np.asarray(model(x[:5])), np.asarray(model(x[5:10]))
    np.testing.assert_allclose(
        np.asarray(plan.verify.score(x[:5], x[5:10])), np.linalg.norm(e1 - e2, axis=1), rtol=1e-5
    )
    assert tfmetric.export.plan_export(model).verify is None  # only Siamese models by default

    with pytest.raises(ValueError, match="`verify` signature needs a threshold"):
        tfmetric.export.plan_export(model, verify=True)
    with pytest.raises(ValueError, match="match and pairs that do not"):
        tfmetric.export.plan_export(model, verify=True, validation=(x, np.zeros(len(x), "int64")))
    with pytest.raises(ValueError, match="`validation` `labels` must be integers"):
        tfmetric.export.plan_export(model, validation=(x, y[:-1]))
    with pytest.raises(ValueError, match="`validation` inputs have shape"):
        tfmetric.export.plan_export(model, validation=(x[:, :5], y))
    with pytest.raises(TypeError, match="`verify` must be"):
        tfmetric.export.plan_export(model, verify="yes")
    with pytest.raises(TypeError, match="`tflite` must be"):
        tfmetric.export.plan_export(model, tflite=3)
    with pytest.raises(ValueError, match="`metric`"):
        tfmetric.export.VerifyOptions(metric="recall")
    images = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()])
    with pytest.raises(ValueError, match="`image_spec` height is 16 but the model input has 8"):
        tfmetric.export.plan_export(images, image_spec=tfmetric.export.ImageSpec(16, 8))
    with pytest.raises(TypeError, match="`image_spec` must be"):
        tfmetric.export.plan_export(images, image_spec=(8, 8, 3))
    assert tfmetric.export.plan_export(images, image_spec=False).image_spec is None
    assert not os.listdir(tmp_path)


def test_siamese_model_of_a_bare_layer_embedder(tmp_path):
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(3, name="tower")
    model = tfmetric.models.SiameseModel(layer, input_shape=(5,), distance="manhattan")
    x = np.random.default_rng(0).normal(size=(12, 5)).astype("float32")
    result = tfmetric.export.export_for_serving(
        model, tmp_path, name="bare", validation=(x, np.arange(12) % 3), parity=QUIET
    )
    loaded = tf.saved_model.load(result.path)
    kernel, bias = (np.asarray(w) for w in layer.weights)
    embeddings = loaded.signatures["serving_default"](inputs=tf.constant(x))["embeddings"]
    np.testing.assert_allclose(embeddings.numpy(), x @ kernel + bias, atol=1e-5)
    out = loaded.signatures["verify"](x1=tf.constant(x), x2=tf.constant(x[::-1].copy()))
    e = x @ kernel + bias
    np.testing.assert_allclose(out["score"].numpy(), np.abs(e - e[::-1]).sum(1), atol=1e-5)


@pytest.mark.parametrize(
    "model_distance, export_distance, rule",
    [("euclidean", "inner_product", "score <= threshold"),
     ("inner_product", "euclidean", "score >= threshold")],
)  # fmt: skip
def test_siamese_verify_direction_is_the_models_not_the_export_distance(
    vector_model, model_distance, export_distance, rule
):
    embedder, x, y = vector_model
    model = tfmetric.models.SiameseModel(embedder, distance=model_distance)
    plan = tfmetric.export.plan_export(model, distance=export_distance, validation=(x, y))
    assert plan.verify.kind == "siamese_distance"
    assert plan.verify.to_json()["is_match"] == rule
    assert plan.verify.calibration["direction_from"] == "model"
    # The decisions, recomputed in numpy from the model's own distance, separate the blobs.
    x1, x2, same = plan.validation.verification_pairs()
    e1, e2 = np.asarray(embedder(x1)), np.asarray(embedder(x2))
    scores = (
        np.linalg.norm(e1 - e2, axis=1)
        if model_distance == "euclidean"
        else np.sum(e1 * e2, axis=1)
    )
    closeness = -scores if model_distance == "euclidean" else scores
    threshold = plan.verify.threshold
    decisions = scores <= threshold if model_distance == "euclidean" else scores >= threshold
    np.testing.assert_array_equal(plan.verify.decide(scores.astype("float32")), decisions)
    # The best accuracy of any threshold in the model's direction (brute force).
    best = max(np.mean((closeness >= t) == same) for t in closeness)
    assert np.mean(decisions == same) == pytest.approx(best, abs=1e-6)
    assert plan.verify.calibration["accuracy"] == pytest.approx(best, abs=1e-6)
