"""The main job on two workers (MultiWorkerMirroredStrategy over 127.0.0.1), kill and restart, bad input.

Every worker is a subprocess on free local ports chosen here; each test has a
deadline and kills what it started.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from absl import flags

import trainers
from trainers import outputs, train  # noqa: F401  (train defines the flags)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The default recipe, small and without batch normalisation (whose per-replica statistics
# would differ from one process's), without XLA (off on CPU replicas under a strategy).
FLAGS = ["--backbone=mlp", "--embedding_dim=8", "--classes_per_batch=4", "--samples_per_class=4",
         "--nojit_compile", "--noexport"]  # fmt: skip
DEADLINE = 900


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(tmp_path, tf_config=None, index=None):
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    if index is not None:
        temp = tmp_path / f"tmp{index}"
        temp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(temp)
    return env


class Cluster:
    """Two workers of one run; `start(i)` (re)launches worker i."""

    def __init__(self, tmp_path, args):
        self.tmp_path, self.args = tmp_path, args
        ports = _free_ports(2)
        self.cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        self.processes = [None, None]
        self.logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]

    def start(self, index):
        tf_config = {"cluster": self.cluster, "task": {"type": "worker", "index": index}}
        with open(self.logs[index], "a") as log:
            self.processes[index] = subprocess.Popen(
                [sys.executable, "-m", "trainers.train", "--strategy=multi_worker", *self.args],
                cwd=REPO, env=_env(self.tmp_path, tf_config, index), stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log(self, index):
        return self.logs[index].read_text()[-3000:]

    def stop(self):
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def cluster_factory(tmp_path):
    made = []

    def make(args):
        cluster = Cluster(tmp_path, args)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def _wait(processes, deadline):
    for process in processes:
        process.wait(timeout=max(1, deadline - time.time()))


@pytest.mark.slow
def test_two_workers_equal_one_process_with_the_same_global_batch(tmp_path, cluster_factory):
    deadline = time.time() + DEADLINE
    args = [*FLAGS, "--epochs=2", "--steps_per_epoch=3"]
    cluster = cluster_factory([*args, f"--model_dir={tmp_path / 'multi'}"])
    cluster.start(0)
    cluster.start(1)
    _wait(cluster.processes, deadline)
    for index in (0, 1):
        assert cluster.processes[index].returncode == 0, cluster.log(index)
    # The same flags in one process without a strategy: this one (the program's `RunConfig`).
    try:
        flags.FLAGS(["train", *args, f"--model_dir={tmp_path / 'single'}"])
        config = trainers.RunConfig.from_flags(flags.FLAGS)
    finally:
        flags.FLAGS.unparse_flags()
    trainers.run(config)

    multi_dir, single_dir = tmp_path / "multi", tmp_path / "single"
    multi = json.loads((multi_dir / outputs.REPORT_FILE).read_text())
    one = json.loads((single_dir / outputs.REPORT_FILE).read_text())
    # The chief wrote the whole run directory; the other worker left nothing behind.
    for name in (outputs.FLAGS_FILE, outputs.MODEL_FILE, outputs.HISTORY_FILE, *outputs.PLOT_FILES):
        assert (multi_dir / name).exists(), name
    # (TensorFlow's AutoGraph imports the code it generates from the temporary directory:
    # Python's bytecode cache of those modules may remain there.)
    left = [n for n in os.listdir(tmp_path / "tmp1") if n != "__pycache__"]
    assert left == []
    if (tmp_path / "tmp1" / "__pycache__").exists():
        cached = os.listdir(tmp_path / "tmp1" / "__pycache__")
        assert all(n.startswith("__autograph_generated_file") for n in cached), cached
    assert "Held-out evaluation" in cluster.log(0) and "Held-out evaluation" not in cluster.log(1)
    assert multi["cluster"] == {"workers": 2, "task": "worker", "index": 0}
    # Global batch: P x K = 16 over 2 replicas (8 each), mined over the gathered 16.
    assert multi["batch"]["replicas"] == 2 and one["batch"]["replicas"] == 1
    assert multi["optimizer_steps"] == one["optimizer_steps"] == 6
    assert multi["final_loss"] == pytest.approx(one["final_loss"], abs=1e-4)
    for key in ("map_at_r", "precision_at_1", "pair_roc_auc"):
        assert multi["held_out"]["model"][key] == pytest.approx(one["held_out"]["model"][key],
                                                                abs=2e-3), key  # fmt: skip
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)).astype("float32")
    a = keras.saving.load_model(multi_dir / outputs.MODEL_FILE)(x)
    b = keras.saving.load_model(single_dir / outputs.MODEL_FILE)(x)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def _backup_epoch(model_dir):
    try:
        return json.loads((model_dir / outputs.BACKUP_DIR / "training_metadata.json").read_text())[
            "epoch"
        ]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_killed_worker_restarted_resumes_the_run(tmp_path, cluster_factory):
    deadline = time.time() + DEADLINE
    epochs, steps = 4, 15
    model_dir = tmp_path / "run"
    cluster = cluster_factory([*FLAGS, f"--epochs={epochs}", f"--steps_per_epoch={steps}",
                               f"--model_dir={model_dir}"])  # fmt: skip
    cluster.start(0)
    cluster.start(1)
    while _backup_epoch(model_dir) is None and time.time() < deadline:
        assert cluster.processes[0].poll() is None, cluster.log(0)
        time.sleep(0.1)
    killed_at = _backup_epoch(model_dir)
    assert killed_at is not None and killed_at < epochs - 1, "not killed mid-run"
    os.kill(cluster.processes[1].pid, signal.SIGKILL)
    cluster.processes[1].wait()
    cluster.start(1)
    # As a cluster manager does (a Kubernetes job's restartPolicy: OnFailure): restart a
    # worker that failed, until both finish.
    restarts = 0
    while any(p.poll() is None for p in cluster.processes) and time.time() < deadline:
        for index, process in enumerate(cluster.processes):
            if process.poll() not in (None, 0):
                assert process.returncode == 3, cluster.log(index)  # lost the peer: restart me
                assert "Restart every worker" in cluster.log(index)
                restarts += 1
                assert restarts <= 4, cluster.log(index)
                cluster.start(index)
        time.sleep(0.5)
    for index in (0, 1):
        assert cluster.processes[index].returncode == 0, cluster.log(index)
    report = json.loads((model_dir / outputs.REPORT_FILE).read_text())
    assert report["resumed"] is True
    assert report["optimizer_steps"] == epochs * steps
    history = (model_dir / outputs.HISTORY_FILE).read_text().splitlines()
    assert sorted({int(row.split(",")[0]) for row in history[1:]}) == list(range(epochs))
    # Even the killed start's temporary directory is gone (removed by the restarted worker).
    assert [n for n in os.listdir(tmp_path / "tmp1") if n.startswith("tfmetric-")] == []


def _single_worker(tmp_path, tf_config, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "trainers.train", "--strategy=multi_worker", *FLAGS,
         f"--model_dir={tmp_path / 'run'}", *args],
        cwd=REPO, env=_env(tmp_path, tf_config), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_unreachable_peer_times_out_naming_its_address(tmp_path):
    port, dead = _free_ports(2)
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}", f"127.0.0.1:{dead}"]},
                 "task": {"type": "worker", "index": 0}}  # fmt: skip
    result = _single_worker(tmp_path, tf_config, "--cluster_timeout=5")
    assert result.returncode != 0
    assert f"no answer from 127.0.0.1:{dead}" in result.stderr
    assert "--cluster_timeout" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_bad_tf_config_fails_before_any_work(tmp_path):
    bad = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}
    result = _single_worker(tmp_path, bad)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "`task.index` 3 is out of range" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
