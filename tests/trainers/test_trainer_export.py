"""The main job's export stage: its saved models served by `python -m export` as they are."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfmetric
from trainers import backbones, exporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(tfmetric.__file__)))
QUIET = tfmetric.export.ParityOptions(latency_runs=0)


@pytest.fixture(scope="module")
def trainer_model(tmp_path_factory):
    """A main-job embedder of 12x12 grayscale pixels in 0..255, saved as the job saves it."""
    path = tmp_path_factory.mktemp("job") / "model.keras"
    embedder = backbones.build_embedder((12, 12, 1), "small_cnn", embedding_dim=6)
    exporting.save_model(embedder, str(path), is_image=True)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 12, 12, 1)).astype("uint8")
    return path, embedder, pixels


def _image_and_float_embeddings(version_dir, pixels):
    loaded = tf.saved_model.load(version_dir)
    png = tf.stack([tf.io.encode_png(p) for p in pixels])
    from_images = loaded.signatures["embed_images"](images=png)["embeddings"].numpy()
    raw = tf.constant(pixels.astype("float32"))
    from_floats = loaded.signatures["serving_default"](inputs=raw)["embeddings"].numpy()
    return from_images, from_floats


def test_saved_model_records_raw_pixels(trainer_model):
    path, embedder, pixels = trainer_model
    assert tfmetric.export.recorded_image_scaling(path) == "raw"
    reloaded = tfmetric.export.load_keras_file(path)  # Keras still loads it, same outputs
    np.testing.assert_allclose(
        np.asarray(reloaded(pixels.astype("float32"))),
        np.asarray(embedder(pixels.astype("float32"))),
        atol=1e-6,
    )


def test_embed_images_of_a_trainer_model_equals_serving_default_on_raw_pixels(
    trainer_model, tmp_path
):
    path, embedder, pixels = trainer_model
    result = tfmetric.export.export_for_serving(path, tmp_path, name="digits", parity=QUIET)
    assert result.metadata["image_spec"]["scaling"] == "raw"
    from_images, from_floats = _image_and_float_embeddings(result.path, pixels)
    np.testing.assert_allclose(from_images, from_floats, atol=1e-5)
    np.testing.assert_allclose(from_floats, np.asarray(embedder(pixels.astype("float32"))),
                               atol=1e-5)  # fmt: skip
    # An explicit ImageSpec wins over the recorded scaling.
    spec = tfmetric.export.ImageSpec(12, 12, 1, scaling="unit")
    unit = tfmetric.export.export_for_serving(path, tmp_path, name="unit", image_spec=spec,
                                              parity=QUIET)  # fmt: skip
    assert unit.metadata["image_spec"]["scaling"] == "unit"
    from_images, _ = _image_and_float_embeddings(unit.path, pixels)
    np.testing.assert_allclose(
        from_images, np.asarray(embedder(pixels.astype("float32") / 255.0)), atol=1e-5
    )


@pytest.mark.slow
def test_readme_export_command_on_a_trainer_model(trainer_model, tmp_path):
    path, _, pixels = trainer_model
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    def export(*args):
        return subprocess.run(
            [sys.executable, "-m", "export", f"--model={path}", f"--output={tmp_path}",
             "--latency_runs=0", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    done = export("--name=digits", "--image_channels=1")  # an image flag, but not the scaling
    assert done.returncode == 0, done.stderr[-2000:]
    version = tmp_path / "digits" / "1"
    metadata = json.loads((version / "assets" / "tfmetric_export.json").read_text())
    assert metadata["image_spec"]["scaling"] == "raw"
    from_images, from_floats = _image_and_float_embeddings(str(version), pixels)
    np.testing.assert_allclose(from_images, from_floats, atol=1e-5)
    done = export("--name=unit", "--image_scaling=unit")  # the flag wins
    assert done.returncode == 0, done.stderr[-2000:]
    metadata = json.loads((tmp_path / "unit" / "1" / "assets" / "tfmetric_export.json").read_text())
    assert metadata["image_spec"]["scaling"] == "unit"


def _tiny_run(model_dir, **settings):
    import trainers

    return trainers.RunConfig(
        backbone="mlp", embedding_dim=8, classes_per_batch=4, samples_per_class=4, epochs=1,
        steps_per_epoch=2, tflite_variants="fp32", model_dir=str(model_dir), **settings,
    )  # fmt: skip


@pytest.mark.slow
def test_mixed_precision_run_completes_its_export(tmp_path):
    import keras

    import trainers

    previous = keras.mixed_precision.global_policy()
    try:
        report = trainers.run(_tiny_run(tmp_path / "run", mixed_precision=True,
                                        mixed_precision_policy="mixed_bfloat16"))  # fmt: skip
    finally:
        keras.mixed_precision.set_global_policy(previous)
    written = json.loads((tmp_path / "run" / "report.json").read_text())
    assert written["export"]["version"] == report["export"]["version"] == 1
    version = report["export"]["path"]
    metadata = json.loads(open(os.path.join(version, "assets", "tfmetric_export.json")).read())
    assert metadata["precision"] == {"trained": "mixed_bfloat16", "exported": "float32"}
    assert os.path.isfile(report["export"]["tflite"]["embedder_fp32"])
    # The SavedModel serves what the trained (float32-weight) embedder computes in float32.
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 1)).astype("float32")
    embedder = tfmetric.export.float32_copy(tfmetric.export.load_keras_file(report["model"]))
    serving = tf.saved_model.load(version).signatures["serving_default"]
    np.testing.assert_allclose(serving(inputs=tf.constant(x))["embeddings"].numpy(),
                               np.asarray(embedder(x)), atol=1e-5)  # fmt: skip


@pytest.mark.slow
def test_failed_export_keeps_the_model_and_the_report(tmp_path, monkeypatch):
    import trainers
    from trainers import errors

    def fail(*args, **kwargs):
        raise RuntimeError("TFLite conversion failed\nmany more lines")

    monkeypatch.setattr(exporting, "export", fail)
    with pytest.raises(errors.ExportFailed) as raised:
        trainers.run(_tiny_run(tmp_path / "run"))
    message = str(raised.value)
    assert "\n" not in message and "RuntimeError: TFLite conversion failed" in message
    assert "model.keras" in message and "report.json" in message and "were kept" in message
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert 0.0 <= report["held_out"]["model"]["map_at_r"] <= 1.0
    assert "export" not in report
    assert (tmp_path / "run" / "model.keras").is_file()
