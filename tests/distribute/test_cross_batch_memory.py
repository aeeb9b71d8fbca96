"""Cross-batch memory, MoCo and two-tower models under MirroredStrategy (2 logical CPUs)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


@pytest.mark.slow
def test_mirrored_training_matches_one_device_and_enqueues_the_global_batch_once():
    result = subprocess.run(
        [sys.executable, str(HERE / "xbm_worker.py")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    mirrored, single = report["mirrored"], report["single"]
    # 2 epochs x 4 steps x 8 samples: each step enqueued the 8 global samples once.
    assert mirrored["count"] == single["count"] == 64
    np.testing.assert_array_equal(mirrored["labels"], single["labels"])
    np.testing.assert_allclose(mirrored["embeddings"], single["embeddings"], atol=1e-5)
    # The memory is full after 2 steps and joins the loss; the strategy follows one device.
    np.testing.assert_allclose(mirrored["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_allclose(mirrored["kernel"], single["kernel"], atol=1e-5)


@pytest.fixture(scope="module")
def contrastive_report():
    result = subprocess.run(
        [sys.executable, str(HERE / "contrastive_worker.py")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    return report


@pytest.mark.slow
def test_mirrored_moco_matches_one_device_and_enqueues_the_global_keys_once(contrastive_report):
    mirrored, single = contrastive_report["moco"]["mirrored"], contrastive_report["moco"]["single"]
    # 2 epochs x 4 steps x 4 keys: each step enqueued the 4 global keys once (not once per replica).
    assert mirrored["count"] == single["count"] == 32
    # The queue of 12 holds the last 12 keys: ids 4..15, slot = position % 12.
    assert mirrored["queue_ids"] == single["queue_ids"] == [8, 9, 10, 11, 12, 13, 14, 15, 4, 5, 6, 7]
    # Both devices' copies of the momentum weights and the queue were written, identically.
    assert mirrored["copies"] == 2 and mirrored["copies_agree"]
    np.testing.assert_allclose(mirrored["queue"], single["queue"], atol=1e-5)
    np.testing.assert_allclose(mirrored["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_allclose(mirrored["kernel"], single["kernel"], atol=1e-5)
    # The momentum update ran once per step on the mirrored weights, as on one device.
    np.testing.assert_allclose(mirrored["momentum_kernel"], single["momentum_kernel"], atol=1e-5)
    assert not np.allclose(mirrored["momentum_kernel"], mirrored["kernel"], atol=1e-3)


@pytest.mark.slow
def test_memory_smaller_than_the_global_batch_is_refused_under_a_strategy(contrastive_report):
    # Each replica's shard (4 samples, 2 keys) would fit; the global batch (8, 4 keys) does not.
    xbm, moco = contrastive_report["small_memory_errors"]
    assert "`memory_size` (6) must be at least the (global) batch size (8)" in (xbm or "")
    assert "(3) must be at least the (global) batch size (4)" in (moco or "")


@pytest.mark.slow
def test_mirrored_two_tower_uses_each_replicas_own_batch_as_negatives(contrastive_report):
    # Documented per-replica semantics (as TensorFlow Recommenders' Retrieval task): each
    # replica's in-batch softmax over its own half; the step follows the mean of the two.
    towers = contrastive_report["two_tower"]
    mirrored, reference = towers["mirrored"], towers["per_replica_reference"]
    np.testing.assert_allclose(mirrored["loss"], reference["loss"], rtol=1e-5)
    for name in ("query", "item", "scale"):
        np.testing.assert_allclose(mirrored[name], reference[name], atol=1e-5)
    # Not the global batch's negatives: that step differs.
    assert not np.allclose(mirrored["query"], towers["global_batch"]["query"], atol=1e-3)
