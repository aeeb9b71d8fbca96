"""Shared test settings: quiet TensorFlow, deterministic seeds, doctest namespace."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "tests"))

import user_install  # noqa: E402  (tests/user_install.py)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# The tests compile their XLA programs (TensorFlow and JAX alike, and in the trainer and export
# processes they start) with the LLVM back end at optimisation level 0 and XLA's CPU elemental
# emitters instead of its MLIR fusion emitters: the same HLO programs, compiled in about half the
# CPU time. Most test programs run once or twice, so compiling dominates: on the 2-core machine
# the nine triplet training tests took 43 CPU-s (72-77 at XLA's defaults, 64 at level 0 alone),
# the JAX pass's triplet-loss file 92 CPU-s (149 at level 0 alone). What users install and run is
# tested at XLA's defaults: the wheel test's environment drops these flags (`user_install.pip_env`),
# as does the quickstart notebook's (the other notebooks add them back), and the benchmarks never
# set them. TFMETRIC_TEST_XLA_DEFAULTS=1 keeps
# the defaults everywhere.
if os.environ.get("TFMETRIC_TEST_XLA_DEFAULTS") != "1":
    _flags = os.environ.get("XLA_FLAGS", "").split()
    _names = {f.split("=")[0] for f in _flags}
    _added = [f for f in user_install.xla_flags_for_tests() if f.split("=")[0] not in _names]
    os.environ["XLA_FLAGS"] = " ".join([*_flags, *_added])

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfmetric  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["tfmetric"] = tfmetric
    doctest_namespace["np"] = np


def pytest_collection_modifyitems(config, items):
    """Files holding slow tests run first (the order within a file is kept).

    CI runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`, which hands
    whole files to the two workers in collection order (without the flag,
    pytest-xdist orders files by their number of tests, so that long files of
    few tests, notebooks and trainer runs, came last): the long files start
    early and the short ones fill the end, so neither worker is left alone
    with a long file at the end of the run.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
