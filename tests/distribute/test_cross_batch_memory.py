"""Cross-batch memory under MirroredStrategy (the global batch is enqueued once per step); MoCo's refusal."""

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
    # MoCo's momentum update and queue are per model, not mirrored: a clear refusal.
    assert "one replica" in (report["moco_error"] or "")
