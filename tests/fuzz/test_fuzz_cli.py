"""Fuzz: the programs' flags (`trainers.train`, `trainers.index`, `export`) and the divergence stop.

Every flag is checked before any work: a bad value ends in one line naming the
flag and a non-zero exit status, never a traceback, never silently ignored.
Most cases run in-process (the configuration and flag checks are plain
Python); a few run the real programs as subprocesses, with `PYTHONPATH` set to
this checkout.
"""

import dataclasses
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags
from hypothesis import given
from hypothesis import strategies as st

import trainers
from trainers import index as index_cli
from trainers import job, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_FIELDS = [f.name for f in dataclasses.fields(trainers.RunConfig) if f.name != "loss_args"]
_HOSTILE = st.sampled_from(
    [0, -1, -(2**40), 2**40, 0.0, -0.5, 1e30, math.nan, math.inf, -math.inf, "", "  ", "x",
     "/missing/file.h5", True, [1], {"a": 1}]
)  # fmt: skip


@given(field=st.sampled_from(_FIELDS), value=_HOSTILE)
def test_run_config_names_the_bad_setting_or_accepts_it(field, value):
    try:
        config = trainers.RunConfig(**{field: value})
    except (ValueError, TypeError) as error:
        assert field in str(error), error
        return
    # Accepted: the value is one the run uses as given (never replaced or dropped).
    assert getattr(config, field) == value or (
        isinstance(value, int) and getattr(config, field) == float(value)
    )


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"train_fraction": 0.0}, r"`--train_fraction` must be in \(0, 1\); got 0.0"),
        ({"train_fraction": -0.2}, "--train_fraction"),
        ({"weights": "/missing.h5"}, "`--weights=/missing.h5` is for keras.applications"),
        ({"weights": "imagenet", "backbone": "mlp"}, "`--backbone=mlp` starts from random"),
        ({"weights": "/missing.h5", "backbone": "resnet50"}, "'/missing.h5' does not exist"),
        ({"seed": -1}, r"`--seed` must be in \[0, 2\*\*32\)"),
        ({"image_size": 100_000}, "`--image_size` must be <= 4096"),
        ({"embedding_dim": 10**7}, "`--embedding_dim` must be <= 65536"),
        ({"model_dir": ""}, "`--model_dir` must not be empty"),
        ({"tfrecord_image_key": " "}, "`--tfrecord_image_key` must not be empty"),
        ({"distance": "manhatan"}, "`--distance`"),
        ({"refresh_every": 5}, "`--refresh_every` is for the offline mining"),
        ({"mining_pool": 64, "model_kind": "triplet"}, "`--mining_pool`.*without mining"),
        ({"tpu": "grpc://1.2.3.4:8470"}, "`--tpu` is for --strategy=tpu"),
        ({"protocol": "pairs", "dataset": "directory:/x", "pairs_file": "/missing.txt"},
         "`--pairs_file` '/missing.txt' does not exist"),
    ],
)  # fmt: skip
def test_settings_that_were_ignored_or_unchecked(settings, match):
    with pytest.raises(ValueError, match=match):
        trainers.RunConfig(**settings)


def test_weights_file_and_triplet_mining_settings_are_accepted(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"x")
    assert trainers.RunConfig(backbone="resnet50", weights=str(weights)).weights == str(weights)
    config = trainers.RunConfig(model_kind="triplet", mining="hard", refresh_every=5, mining_pool=64)
    assert config.mining_refresh_every == 5


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


def test_flags_fail_before_any_work(run_main, tmp_path):
    assert "--train_fraction" in run_main("--train_fraction=0")
    assert "--weights" in run_main("--weights=/missing.h5")
    assert "--learning_rate" in run_main("--learning_rate=nan")
    assert "--epochs" in run_main("--epochs=0")
    # A loss argument's value (not just its name) is checked before the data are read.
    assert "sideways" in run_main(f"--dataset=npz:{tmp_path / 'missing.npz'}", "--mining=sideways")
    assert not (tmp_path / "run").exists()


def test_divergence_stop_is_keras_terminate_on_nan_with_a_message():
    stop = job.DivergenceStop()
    assert isinstance(stop, keras.callbacks.TerminateOnNaN)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(1e30), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32") * 1e10
    history = model.fit(x, x[:, :2], batch_size=8, epochs=3, callbacks=[stop], verbose=0)
    assert stop.diverged is not None
    epoch, batch, what = stop.diverged
    assert epoch == 0 and batch is not None and "loss became" in what
    assert len(history.history["loss"]) == 1  # stopped in the first epoch
    message = stop.message(trainers.RunConfig(learning_rate=1e30))
    assert "training diverged" in message and "--learning_rate=1e+30" in message


_INDEX_FLAGS = {"model": None, "store": None, "catalogue": None, "metadata": None,
                "distance": None, "item": None, "image": None, "k": 5, "where": [],
                "json": False}  # fmt: skip


@pytest.fixture(scope="module")
def index_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    model = folder / "model.keras"
    model.write_bytes(b"not checked here")
    store = folder / "store.db"
    store.write_bytes(b"")
    return str(model), str(store), str(folder)


@given(
    command=st.sampled_from(["build", "query"]),
    flag=st.sampled_from(["model", "store", "catalogue", "metadata", "distance", "image", "k",
                          "where", "item"]),
    value=st.sampled_from(["", "/missing/x", "npz:/missing.npz", "books", "directory:/nope",
                           "redis://host:port", "redis://h:1/db", 0, -3, "field", "nope"]),
)  # fmt: skip
def test_index_flags_are_checked_before_any_work(index_files, command, flag, value):
    model, store, folder = index_files
    values = dict(_INDEX_FLAGS, model=model, store=store)
    values.update({"catalogue": "digits"} if command == "build" else {"item": "1"})
    if isinstance(value, int) != (flag == "k"):
        return  # an absl integer flag holds integers only
    values[flag] = value
    try:
        index_cli.check_flags(command, values)
    except index_cli.InputError as error:
        assert f"`--{flag}`" in str(error) or "--model" in str(error), error
        return
    # Accepted: an item id or a filter (checked against the store), or no --model for a query
    # by stored item (the store's model version is then not checked).
    assert flag in ("item", "where") or (flag, value, command) == ("model", "", "query"), (
        flag, value)  # fmt: skip


def _run(module, *args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_train_program_missing_weights_is_one_line_and_status_2(tmp_path):
    done = _run("trainers.train", "--weights=/missing.h5", f"--model_dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: `--weights=/missing.h5`")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_index_program_bad_k_fails_before_loading_anything(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    done = _run("trainers.index", "query", f"--model={model}", f"--store={tmp_path / 's.db'}",
                "--item=1", "--k=0")  # fmt: skip
    assert done.returncode == 1
    assert "error: `--store`" in done.stderr or "error: `--k`" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_export_program_corrupt_model_says_corrupt(tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"PK\x03\x04 truncated")
    done = _run("export", f"--model={model}", f"--output={tmp_path / 'out'}")
    assert done.returncode == 1
    assert "corrupt or unreadable" in done.stderr and str(model) in done.stderr, done.stderr
    assert "File not found" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_program_stops_a_diverged_run_with_a_message(tmp_path):
    done = _run("trainers.train", "--learning_rate=1e30", "--epochs=2", "--steps_per_epoch=3",
                "--classes_per_batch=4", "--samples_per_class=4", "--embedding_dim=8",
                "--noexport", "--nojit_compile", f"--model_dir={tmp_path / 'run'}", timeout=600)
    assert done.returncode == 4, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged") and "--learning_rate=1e+30" in last
    assert "Traceback" not in done.stderr and "NaN queries" not in done.stderr
    assert not (tmp_path / "run" / "model.keras").exists()
    assert not (tmp_path / "run" / "report.json").exists()
