"""Shared test settings: quiet TensorFlow, deterministic seeds, doctest namespace."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "tests"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

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
