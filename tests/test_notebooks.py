"""Executes every notebook in colab/ with a real Jupyter kernel; any error fails.

The kernel is this test's own Python (a kernel spec written to a temporary
JUPYTER_PATH), so a fresh machine needs no `ipykernel install` and the
notebooks see the same installed tfmetric as the tests.
"""

import glob
import json
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colab", "*.ipynb")))
# Notebooks whose point is to show plots: they must produce images.
WITH_PLOTS = {"triplet_quickstart.ipynb": 3, "arcface.ipynb": 3, "siamese_one_shot.ipynb": 1}
# Numbers a notebook prints that must reach a target (issue targets).
TARGETS = {
    "siamese_one_shot.ipynb": [
        (r"ROC AUC \(contrastive, euclidean distance\): ([0-9.]+)", 0.98),
        (r"ROC AUC \(TripletModel embedder\): ([0-9.]+)", 0.95),
    ],
}

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A `python3` kernel spec running `sys.executable`, first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(root), saved["JUPYTER_PATH"]]))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, saved["PYTHONPATH"]]))
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_there_are_notebooks():
    names = [os.path.basename(n) for n in NOTEBOOKS]
    for name in WITH_PLOTS:
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_clean_and_opens_in_colab(path):
    notebook = nbformat.read(path, as_version=4)
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and "colab.research.google.com" in first.source
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "except ImportError" in code[0].source and "pip" in code[0].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "outputs must be cleared in git"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_without_error(path, kernel_env, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    name = os.path.basename(path)
    if name in WITH_PLOTS:
        images = [out for out in outputs if "image/png" in out.get("data", {})]
        assert len(images) >= WITH_PLOTS[name]
    text = "".join(out.get("text", "") for out in outputs)
    for pattern, target in TARGETS.get(name, []):
        match = re.search(pattern, text)
        assert match, f"{name} did not print {pattern!r}"
        assert float(match[1]) >= target, f"{name}: {match[0]} < {target}"
