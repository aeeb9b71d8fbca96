"""With a seed and `enable_op_determinism`, two CPU runs give identical embeddings."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("determinism_worker.py")


def _run_twice():
    """Two independent processes, run side by side."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    runs = [
        subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outputs


@pytest.mark.slow
def test_two_seeded_runs_give_identical_embeddings():
    first, second = _run_twice()
    assert set(first) == {"triplet", "arcface"}
    for name in first:
        a, b = np.asarray(first[name]), np.asarray(second[name])
        assert a.shape == (64, 4) and np.isfinite(a).all()
        assert np.std(a) > 0, name
        np.testing.assert_array_equal(a, b, err_msg=name)
