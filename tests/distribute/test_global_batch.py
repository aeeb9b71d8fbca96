"""Global-batch mining under tf.distribute: R replicas x B/R samples equal one device with B.

The strategies need logical CPU devices or a TF_CONFIG cluster, both fixed when
TensorFlow starts, so each check runs in fresh subprocesses
(`mirrored_worker.py`, `multi_worker_worker.py`) that print or write JSON.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

import tfmetric

HERE = pathlib.Path(__file__).parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def test_cross_replica_argument_is_configurable_and_validated():
    for cls in (
        tfmetric.losses.TripletLoss,
        tfmetric.losses.NTXentLoss,
        tfmetric.losses.CircleLoss,
    ):
        loss = cls(cross_replica=False)
        config = loss.get_config()
        assert config["cross_replica"] is False
        assert cls.from_config(config).cross_replica is False
        assert cls().cross_replica is True
        with pytest.raises(TypeError, match="cross_replica"):
            cls(cross_replica="yes")


@pytest.fixture(scope="module")
def mirrored_report():
    result = subprocess.run(
        [sys.executable, str(HERE / "mirrored_worker.py")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("replicas", ["2", "4"])
def test_mirrored_strategy_matches_one_device(mirrored_report, replicas):
    report = mirrored_report[replicas]
    assert report["num_replicas"] == int(replicas)
    assert len(report["losses"]) >= 3
    for name, entry in report["losses"].items():
        assert np.isfinite(entry["strategy_loss"]), name
        np.testing.assert_allclose(
            entry["strategy_loss"], entry["single_loss"], rtol=1e-5, err_msg=name
        )
        np.testing.assert_allclose(
            entry["strategy_kernel"], entry["single_kernel"], atol=1e-5, err_msg=name
        )
    for name, (strategy_value, shard_mean) in report["per_replica"].items():
        # cross_replica=False: each replica mines its own shard only.
        np.testing.assert_allclose(strategy_value, shard_mean, rtol=1e-5, err_msg=name)
        if name in report["losses"]:
            assert abs(strategy_value - report["losses"][name]["single_loss"]) > 1e-3, name
    for name, entry in report["xla"].items():
        np.testing.assert_allclose(
            entry["strategy"][0], entry["single"][0], rtol=1e-5, err_msg=name
        )
        np.testing.assert_allclose(
            entry["strategy"][1], entry["single"][1], atol=1e-5, err_msg=name
        )


@pytest.mark.slow
def test_sum_reduction_under_mirrored_strategy_matches_one_device(mirrored_report):
    strategy_sum, single_sum = mirrored_report["4"]["sum_reduction"]
    np.testing.assert_allclose(strategy_sum, single_sum, rtol=1e-5)


@pytest.mark.slow
def test_proxy_model_under_mirrored_strategy_matches_one_device(mirrored_report):
    strategy_loss, strategy_weights = mirrored_report["4"]["proxy_model"]["strategy"]
    single_loss, single_weights = mirrored_report["4"]["proxy_model"]["single"]
    np.testing.assert_allclose(strategy_loss, single_loss, rtol=1e-5)
    assert len(strategy_weights) == len(single_weights) == 2  # embedder kernel, proxies
    for strategy_weight, single_weight in zip(strategy_weights, single_weights, strict=True):
        np.testing.assert_allclose(strategy_weight, single_weight, atol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_trains_to_one_device_weights(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(2)]}
    workers = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "multi_worker_worker.py"),
                    str(tmp_path / f"{index}.json"),
                ],
                env=dict(ENV, TF_CONFIG=json.dumps(tf_config)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        errors = [worker.communicate(timeout=600)[1] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, error in zip(workers, errors, strict=True):
        assert worker.returncode == 0, error[-3000:]
    for index in range(2):
        report = json.loads((tmp_path / f"{index}.json").read_text())
        for name, entry in report.items():
            assert np.abs(np.subtract(entry["single"], entry["initial"])).max() > 1e-3, name
            np.testing.assert_allclose(entry["strategy"], entry["single"], atol=1e-5, err_msg=name)


def test_offline_mining_and_curriculum_under_mirrored_strategy():
    # Mirrored embedder variables, read by the sampler's in-graph mining; XLA training step.
    result = subprocess.run(
        [sys.executable, str(HERE / "offline_mining_worker.py")],
        capture_output=True,
        text=True,
        env=dict(ENV, PYTHONPATH=str(HERE.parent.parent)),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert len(report["losses"]) == 2 and np.all(np.isfinite(report["losses"]))
    assert report["valid"] and report["hard_equals_brute_force"]
