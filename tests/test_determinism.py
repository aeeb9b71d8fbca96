"""With a seed and `enable_op_determinism`, two CPU runs give identical embeddings."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("determinism_worker.py")


def _run():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, str(WORKER)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_seeded_runs_give_identical_embeddings():
    first, second = _run(), _run()
    assert set(first) == {"triplet", "arcface"}
    for name in first:
        a, b = np.asarray(first[name]), np.asarray(second[name])
        assert a.shape == (64, 4) and np.isfinite(a).all()
        assert np.std(a) > 0, name
        np.testing.assert_array_equal(a, b, err_msg=name)
