"""`python -m export`: flags, a full run, bad input, and a SIGKILL mid-export."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tfmetric

REPO = os.path.dirname(os.path.dirname(os.path.abspath(tfmetric.__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "export", *args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def files(vector_model, tmp_path_factory):
    model, x, y = vector_model
    root = tmp_path_factory.mktemp("cli")
    model.save(root / "products.keras")
    ids = np.array([f"p{i}" for i in range(len(x))])
    np.savez(root / "gallery.npz", inputs=x, labels=y, ids=ids)
    return root


def test_helpfull_documents_the_flags():
    _, out, _ = _finish(_cli("--helpfull"))  # absl exits with status 1 after help.
    for flag in (
        "model",
        "output",
        "name",
        "gallery",
        "tflite",
        "representative",
        "validation",
        "distance",
        "top_k",
        "image_height",
        "image_scaling",
        "require_parity",
        "verify",
        "verify_threshold",
    ):
        assert f"--{flag}" in out or f"--[no]{flag}" in out, flag


@pytest.mark.slow
def test_run_then_bad_input(files):
    out_dir = files / "models"
    code, out, err = _finish(
        _cli(
            f"--model={files / 'products.keras'}",
            f"--output={out_dir}",
            f"--gallery={files / 'gallery.npz'}",
            "--tflite=fp32",
            "--latency_runs=1",
        )
    )
    assert code == 0, err
    assert "Exported version 1" in out
    assert "Signatures: serving_default, retrieve" in out
    assert "saved_model" in out and "fp32" in out  # The parity table.
    version = out_dir / "products" / "1"
    assert (version / "tflite" / "embedder_fp32.tflite").is_file()
    assert (version / "tflite" / "retrieve_fp32.tflite").is_file()
    assert (out_dir / "models.config").is_file()

    before = sorted(os.walk(out_dir))
    code, _, err = _finish(_cli(f"--model={files / 'missing.keras'}", f"--output={out_dir}"))
    assert code == 1
    assert "missing.keras" in err and "does not exist" in err
    assert sorted(os.walk(out_dir)) == before


@pytest.mark.slow
def test_sigkill_mid_export_leaves_no_version(files, vector_model):
    out_dir = files / "killed"
    base = out_dir / "products"
    process = _cli(
        f"--model={files / 'products.keras'}",
        f"--output={out_dir}",
        f"--gallery={files / 'gallery.npz'}",
        "--tflite=fp32,fp16,dynamic_int8,int8",
    )
    deadline = time.monotonic() + 300
    partial = None
    while partial is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if base.is_dir():
            for entry in os.listdir(base):
                if (base / entry / "saved_model.pb").exists():
                    partial = base / entry
    assert partial is not None, "the export finished or failed before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    # A half-written export is there, but not as a version TF Serving would load.
    assert partial.exists() and not partial.name.isdigit()
    assert not any(entry.isdigit() for entry in os.listdir(base))
    assert not (out_dir / "models.config").exists()

    # Re-running publishes version 1 and removes the dead export's directory.
    result = tfmetric.export.export_for_serving(
        vector_model[0], out_dir, name="products", parity=tfmetric.export.ParityOptions(0)
    )
    assert result.version == 1
    assert os.listdir(base) == ["1"]


@pytest.mark.slow
def test_siamese_model_gets_verify_with_the_given_threshold(siamese_model, tmp_path):
    model, x, y = siamese_model
    model.save(tmp_path / "pairs.keras")
    np.savez(tmp_path / "validation.npz", inputs=x, labels=y)
    code, out, err = _finish(
        _cli(
            f"--model={tmp_path / 'pairs.keras'}",
            f"--output={tmp_path / 'models'}",
            f"--validation={tmp_path / 'validation.npz'}",
            "--verify_threshold=0.25",
            "--latency_runs=0",
        )
    )
    assert code == 0, err
    assert "Signatures: serving_default, verify" in out
    assert "verify on" in out  # the verify parity table
    with open(tmp_path / "models" / "pairs" / "1" / "assets" / "tfmetric_export.json") as f:
        verify = json.load(f)["verify"]
    assert verify["threshold"] == 0.25 and verify["calibration"]["source"] == "given"


@pytest.mark.slow
def test_unwritable_output_is_a_one_line_error_naming_output(files, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    model = f"--model={files / 'products.keras'}"
    code, _, err = _finish(_cli(model, f"--output={afile / 'serving'}"))
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("export: error: `--output=") and "is not a directory" in last, err
    assert str(afile) in last and "Traceback" not in err
    assert afile.read_text() == "mine"
    # An OSError the checks cannot foresee (a name too long for the file system) is one line too.
    code, _, err = _finish(_cli(model, f"--output={tmp_path / ('x' * 300)}", "--latency_runs=0"))
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("export: error: "), err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == ["afile"]


def test_validation_pairs_missing_a_key_name_it(vector_model, tmp_path):
    model, x, y = vector_model
    np.savez(tmp_path / "pairs.npz", inputs=x, x1=x[:4], x2=x[4:8])
    with pytest.raises(ValueError, match=r"missing \['same'\]"):
        tfmetric.export.ValidationData.from_source(str(tmp_path / "pairs.npz"), (12,))
    with pytest.raises(ValueError, match=r"`validation` pairs need .*missing \['x1', 'same'\]"):
        tfmetric.export.plan_export(model, validation={"inputs": x, "x2": x[:4]})
    # The full set is accepted.
    data = tfmetric.export.ValidationData.from_source(
        {"inputs": x, "x1": x[:4], "x2": x[4:8], "same": np.array([1, 0, 1, 0])}, (12,)
    )
    assert data.pairs[2].tolist() == [True, False, True, False]


def test_output_below_a_file_is_refused_before_writing(vector_model, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(ValueError, match=r"`output` .* cannot be written: .*afile' is not a dir"):
        tfmetric.export.export_for_serving(vector_model[0], afile / "serving")
    assert afile.read_text() == "mine"
