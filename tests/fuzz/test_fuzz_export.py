"""Fuzz: `tfmetric.export` on damaged or missing files and bad arguments; `tfmetric.callbacks`.

The contract: a `ValueError` / `TypeError` / `FileNotFoundError` naming the
argument or the file, before anything is written; a damaged `.keras` file is
reported as corrupt, never as "File not found".
"""

import math
import os
import zipfile

import keras
import numpy as np
import pytest
from fuzz_strategies import assert_names
from hypothesis import given
from hypothesis import strategies as st

from tfmetric import callbacks, export


@pytest.fixture(scope="module")
def embedder():
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="ones")], name="tiny"
    )


@pytest.fixture(scope="module")
def saved(embedder, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    embedder.save(path)
    return path, path.read_bytes()


def _damaged(content, how, position):
    if how == "truncate":
        return content[: position % len(content)]
    if how == "flip":
        data = bytearray(content)
        data[position % len(data)] ^= 0x5A
        return bytes(data)
    if how == "garbage":
        return bytes((position * 7 + i) % 256 for i in range(position % 2048))
    return b"PK\x05\x06" + b"\x00" * 18  # an empty zip archive


@given(how=st.sampled_from(["truncate", "flip", "garbage", "empty_zip"]),
       position=st.integers(0, 2**20))  # fmt: skip
def test_damaged_keras_file_is_reported_as_corrupt(saved, tmp_path_factory, how, position):
    _, content = saved
    folder = tmp_path_factory.mktemp("damaged")
    path = folder / "model.keras"
    path.write_bytes(_damaged(content, how, position))
    try:
        embedder, shape, dim = export.resolve_embedder(path)
    except ValueError as error:
        message = str(error)
        assert str(path) in message and "File not found" not in message, message
        assert "corrupt" in message or "cannot be loaded" in message, message
    else:
        # A flipped byte that no reader checks (zip metadata, padding): the same model.
        assert (shape, dim) == ((4,), 3)
        np.testing.assert_allclose(embedder(np.ones((1, 4), "float32")), [[4.0, 4.0, 4.0]])
    assert sorted(os.listdir(folder)) == ["model.keras"]  # nothing written beside it


def test_zip_that_is_not_a_keras_file_and_missing_file(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match="corrupt or unreadable.*config.json"):
        export.export_for_serving(path, tmp_path / "out")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{not json")
    with pytest.raises(ValueError, match="cannot be loaded as a Keras model"):
        export.export_for_serving(path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        export.export_for_serving(tmp_path / "missing.keras", tmp_path / "out")
    with pytest.raises(ValueError, match="directory"):
        export.export_for_serving(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@given(how=st.sampled_from(["truncate", "garbage", "empty"]), position=st.integers(1, 4000),
       argument=st.sampled_from(["gallery", "validation", "representative"]))  # fmt: skip
def test_damaged_npz_inputs_name_the_argument_and_the_file(
    embedder, tmp_path_factory, how, position, argument
):
    folder = tmp_path_factory.mktemp("npz")
    good = folder / "good.npz"
    np.savez(good, inputs=np.ones((5, 4), "float32"), labels=np.arange(5))
    bad = folder / f"{argument}.npz"
    bad.write_bytes(b"" if how == "empty" else _damaged(good.read_bytes(), how, position))
    kwargs = {argument: str(bad)}
    if argument == "representative":
        kwargs = {"tflite": export.TFLiteOptions(["int8"], representative=str(bad))}
    with pytest.raises(ValueError) as error:
        export.export_for_serving(embedder, folder / "out", **kwargs)
    assert str(bad) in str(error.value) and f"`{argument}`" in str(error.value), error.value
    assert not (folder / "out").exists()


_BAD_ARGUMENTS = [
    ({"top_k": 0}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"distance": "no_such"}, "no_such"),
    ({"name": "../escape"}, "name"),
    ({"name": ""}, "name"),
    ({"tflite": ["int4"]}, "int4"),
    ({"tflite": "fp32,,nope"}, "nope"),
    ({"image_spec": export.ImageSpec(8, 8)}, "image"),
    ({"gallery": {"embeddings": np.ones((3, 5))}}, "gallery"),
    ({"gallery": {"embeddings": np.full((3, 3), math.nan)}}, "gallery"),
    ({"gallery": {"embeddings": np.ones((3, 3)), "labels": [0.5, 1, 2]}}, "labels"),
    ({"validation": np.ones((2, 7), "float32")}, "validation"),
    ({"validation": np.ones((0, 4), "float32")}, "validation"),
    ({"verify": "yes"}, "verify"),
    ({"parity": 3}, "parity"),
    ({"serving_base_path": 5}, "serving_base_path"),
    ({"l2_normalize": "yes"}, "l2_normalize"),
]


@pytest.mark.parametrize("kwargs, named", _BAD_ARGUMENTS)
def test_bad_export_arguments_fail_before_anything_is_written(
    embedder, tmp_path_factory, kwargs, named
):
    out = tmp_path_factory.mktemp("export") / "out"
    with pytest.raises((ValueError, TypeError)) as error:
        export.export_for_serving(embedder, out, **kwargs)
    assert named in str(error.value), error.value
    assert not out.exists()


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda: export.ParityOptions(latency_runs=-1), "latency_runs"),
        (lambda: export.ParityOptions(require="yes"), "require"),
        (lambda: export.TFLiteOptions(["fp32"], retrieval="no"), "retrieval"),
        (lambda: export.TFLiteOptions(["fp32"], verify=1), "verify"),
        (lambda: export.VerifyOptions(threshold=math.nan), "threshold"),
        (lambda: export.VerifyOptions(metric="auc"), "metric"),
        (lambda: export.ImageSpec(0, 8), "height"),
        (lambda: export.ImageSpec(8, 8, channels=4), "channels"),
        (lambda: export.ImageSpec(8, 8, scaling="zscore"), "scaling"),
    ],
)
def test_export_options_check_their_arguments(make, named):
    with pytest.raises((ValueError, TypeError)) as error:
        make()
    assert_names(error.value, named)


def test_output_that_is_a_file_or_foreign_folder(embedder, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError) as error:
        export.export_for_serving(embedder, tmp_path / "file")
    assert_names(error.value, "output")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        export.export_for_serving(embedder, tmp_path / "foreign")
    assert os.listdir(tmp_path / "foreign") == ["notes.txt"]


# Callbacks: bad arguments name the argument.

_X = np.random.default_rng(0).normal(size=(12, 4)).astype("float32")
_Y = np.repeat(np.arange(3), 4)

_CALLBACK_CASES = [
    ("retrieval", {"validation_data": _X}, "validation_data"),
    ("retrieval", {"validation_data": (_X, _Y[:-1])}, "validation_data"),
    ("retrieval", {"metrics": ()}, "metrics"),
    ("retrieval", {"metrics": ("map_at_r", "accuracy")}, "metrics"),
    ("retrieval", {"every": 0}, "every"),
    ("retrieval", {"k": ()}, "k"),
    ("retrieval", {"k": (1, -5)}, "k"),
    ("retrieval", {"batch_size": 0}, "batch_size"),
    ("retrieval", {"prefix": 3}, "prefix"),
    ("retrieval", {"distance": "nope"}, "nope"),
    ("retrieval", {"gallery_data": (_X, _Y[:3])}, "gallery_data"),
    ("mining", {}, "margin"),
    ("mining", {"margin": math.nan}, "margin"),
    ("mining", {"margin": {0: 0.2, 3: math.inf}}, "margin"),
    ("mining", {"mining": {0: "sideways"}}, "sideways"),
    ("mining", {"mining": {2: "hard"}}, "mining"),
    ("mining", {"margin": {-1: 0.2}}, "margin"),
    ("mining", {"margin": "0.2"}, "margin"),
]


@pytest.mark.parametrize("kind, kwargs, named", _CALLBACK_CASES)
def test_callback_bad_arguments_name_the_argument(kind, kwargs, named):
    with pytest.raises((ValueError, TypeError)) as error:
        if kind == "retrieval":
            callbacks.RetrievalEvaluation(**{"validation_data": (_X, _Y), **kwargs})
        else:
            callbacks.MiningSchedule(**kwargs)
    assert named in str(error.value), error.value


def test_retrieval_evaluation_of_a_model_that_is_not_an_embedder():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Reshape((2, 2))])
    callback = callbacks.RetrievalEvaluation((_X, _Y))
    callback.set_model(model)
    with pytest.raises(ValueError, match=r"\(batch, dim\)"):
        callback.evaluate()
