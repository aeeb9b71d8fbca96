"""The trainer program: end to end, kill and resume, bad input."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from PIL import Image

from trainers import job, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "--classes_per_batch=4",
    "--samples_per_class=4",
    "--embedding_dim=8",
]


# What a default (quiet) run may print: its progress bars, tables and last line.
ALLOWED_LINES = re.compile(
    r"^(train|evaluate|export) +\[[#.]+\] \d+/\d+ - |"
    r"^Parity vs Keras|^runtime |^keras |^saved_model |^(fp32|fp16|dynamic_int8|int8) |"
    r"^Held-out evaluation|^metric |^-+$|^(Precision@1|MAP@R|R-precision|Verification ROC AUC"
    r"|Verification EER|Pair ROC AUC|Pair EER|TAR@FAR=1e-3|Pair accuracy|5-way 1-shot|5-way 5-shot"
    r"|Pair threshold) |^Outputs in "
)


def _run(args, timeout=900, quiet_env=True):
    env = dict(os.environ, PYTHONPATH=REPO)
    if quiet_env:
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    else:
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "trainers.train", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


@pytest.mark.slow
def test_end_to_end_tiny_run_writes_every_output(tmp_path):
    import keras
    import tensorflow as tf

    model_dir = tmp_path / "run"
    # TensorFlow's own log level left at its default: the job itself keeps the output quiet.
    result = _run(["--epochs=2", "--steps_per_epoch=3", *TINY, f"--model_dir={model_dir}"],
                  quiet_env=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MAP@R" in result.stdout and "raw input" in result.stdout
    assert result.stderr == ""
    noise = [line for line in result.stdout.splitlines() if not ALLOWED_LINES.match(line)]
    assert noise == []
    phases = [line.split()[0] for line in result.stdout.splitlines() if "[" in line and "]" in line]
    assert phases == ["train", "evaluate", "export"]  # one progress line per phase

    report = json.loads((model_dir / "report.json").read_text())
    for side in ("model", "raw_input_baseline"):
        numbers = report["held_out"][side]
        for key in ("precision_at_1", "map_at_r", "r_precision", "roc_auc", "eer"):
            assert 0.0 <= numbers[key] <= 1.0, (side, key)
    assert report["optimizer_steps"] == 2 * 3
    assert report["split"] == {"train_fraction": 0.7, "train_samples": 1258, "train_classes": 10, "test_samples": 539,
                               "test_classes": 10}  # fmt: skip
    assert report["loss"]["class"] == "TripletLoss" and report["model_kind"] == "embedding"
    assert json.loads((model_dir / "flags.json").read_text())["epochs"] == 2

    for name in ("training_curves.png", "embeddings_2d.png", "roc_curve.png",
                 "nearest_neighbors.png"):  # fmt: skip
        width, height = _png_size(model_dir / name)
        assert width > 100 and height > 100, name
    projector = model_dir / "logs" / "projector"
    assert len((projector / "metadata.tsv").read_text().splitlines()) == 539
    assert len((projector / "embeddings.tsv").read_text().splitlines()) == 539
    _png_size(projector / "sprite.png")
    if importlib.util.find_spec("tensorboard") is not None:  # scalars need the tensorboard package
        events = os.listdir(model_dir / "logs" / "train")
        assert any(f.startswith("events.out.tfevents") for f in events)

    embedder = keras.saving.load_model(model_dir / "model.keras")
    x = np.zeros((2, 8, 8, 1), "float32")
    expected = np.asarray(embedder(x))
    assert expected.shape == (2, 8)

    export = report["export"]
    saved = tf.saved_model.load(export["path"])
    assert "serving_default" in saved.signatures
    served = list(saved.signatures["serving_default"](tf.constant(x)).values())[0].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert export["parity"]["runtimes"]
    for path in export["tflite"].values():
        assert os.path.getsize(path) > 0
    assert not (model_dir / "backup").exists()  # removed once training completed


def _wait_for_epoch(model_dir, process, timeout=600):
    metadata = model_dir / "backup" / "training_metadata.json"
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if metadata.exists():
            try:
                return json.loads(metadata.read_text())["epoch"]
            except (ValueError, KeyError):
                pass
        time.sleep(0.05)
    return None


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_step_count(tmp_path):
    epochs, steps = 5, 20
    args = [f"--epochs={epochs}", f"--steps_per_epoch={steps}", "--nojit_compile", "--noexport", *TINY]
    model_dir = tmp_path / "killed"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    process = subprocess.Popen(
        [sys.executable, "-m", "trainers.train", *args, f"--model_dir={model_dir}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        epoch = _wait_for_epoch(model_dir, process)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert epoch is not None and 1 <= epoch < 5, f"not killed mid-run (epoch {epoch})"
    assert process.returncode == -signal.SIGKILL
    assert not (model_dir / "report.json").exists()

    resumed = _run([*args, f"--model_dir={model_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Restarted after the last checkpoint, not from the first epoch.
    assert re.search(r"resumed_at_epoch: [2-5]\b", resumed.stdout), resumed.stdout
    report = json.loads((model_dir / "report.json").read_text())
    assert report["resumed"] is True
    # Exactly the steps of an uninterrupted run: none lost, none run twice.
    assert report["optimizer_steps"] == epochs * steps
    history = (model_dir / "history.csv").read_text().splitlines()
    assert sorted({int(row.split(",")[0]) for row in history[1:]}) == list(range(epochs))


@pytest.fixture
def run_main(tmp_path):
    """Runs `train.main` in-process with flags; returns the raised error's message."""

    def run(*args):
        argv = ["train", f"--model_dir={tmp_path / 'run'}", "--noexport", *args]
        try:
            flags.FLAGS(argv)
            with pytest.raises(ValueError) as error:
                train.main([])
            return str(error.value)
        finally:
            flags.FLAGS.unparse_flags()

    return run


def test_bad_names_list_the_valid_ones(run_main, tmp_path):
    assert "directory:PATH" in run_main("--dataset=imagenet")
    message = run_main("--loss=tripplet")
    assert "'triplet'" in message and "'arc_face'" in message
    message = run_main("--backbone=resnet")
    assert "'small_cnn'" in message and "'resnet50'" in message
    assert "its arguments are" in run_main("--loss=triplet", "--temperature=0.5")
    assert "--classes_per_batch" in run_main("--classes_per_batch=11")
    assert "'adam'" in run_main("--optimizer=adamm")
    # Nothing was trained or written for any of them.
    assert not (tmp_path / "run" / "report.json").exists()


def test_learning_rate_flag_must_be_finite_and_positive(run_main, tmp_path):
    for value in ("inf", "nan", "-0.1", "0"):
        message = run_main(f"--learning_rate={value}")
        assert message.startswith("`--learning_rate` must be a finite number > 0; got "), message
        assert message.endswith(f"got {float(value)}.")
    assert not (tmp_path / "run").exists()


def test_bad_paths_and_empty_datasets_fail_before_training(run_main, tmp_path):
    assert "no such directory" in run_main(f"--dataset=directory:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    assert "hold no images" in run_main(f"--dataset=directory:{empty}")
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 4)), y=np.zeros(0, int))
    assert "is empty" in run_main(f"--dataset=npz:{tmp_path / 'e.npz'}")
    assert "matches no files" in run_main(f"--dataset=tfrecord:{tmp_path}/*.tfrecord")
    assert not (tmp_path / "run" / "backup").exists()


def test_model_dir_of_another_run_is_refused_unless_overwrite(tmp_path):
    model_dir = str(tmp_path / "run")
    first = {"dataset": "digits", "epochs": 3}
    assert job.prepare_model_dir(model_dir, first, overwrite=False) is False
    os.makedirs(os.path.join(model_dir, "backup"))
    # The same run resumes from its checkpoint.
    assert job.prepare_model_dir(model_dir, first, overwrite=False) is True
    other = {"dataset": "digits", "epochs": 4}
    with pytest.raises(ValueError, match=r"holds a different run \(--epochs: 3 -> 4\).*--overwrite"):
        job.prepare_model_dir(model_dir, other, overwrite=False)
    assert job.prepare_model_dir(model_dir, other, overwrite=True) is False
    assert not os.path.exists(os.path.join(model_dir, "backup"))
    assert json.loads(open(os.path.join(model_dir, "flags.json")).read()) == other


def test_model_dir_with_foreign_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a trainer run"):
        job.prepare_model_dir(str(tmp_path), {"dataset": "digits"}, overwrite=False)
    job.prepare_model_dir(str(tmp_path), {"dataset": "digits"}, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # --overwrite removes only trainer files


def test_model_dir_below_a_file_is_an_input_error(run_main, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(ValueError, match=r"`--model_dir=.*afile/run` cannot be created: .*afile'"):
        job.prepare_model_dir(str(afile / "run"), {"dataset": "digits"}, overwrite=False)
    message = run_main(f"--model_dir={afile / 'run'}", "--backbone=mlp", "--embedding_dim=4")
    assert message.startswith(f"`--model_dir={afile / 'run'}` cannot be created")
    assert "is not a directory" in message
    assert afile.read_text() == "mine"
