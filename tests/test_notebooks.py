"""Executes every notebook in colab/ with a real Jupyter kernel, install cell included.

Every notebook's first code cell installs tfmetric as a Colab user does,
`%pip install -q "tfmetric[extras]"`. Each notebook runs in a fresh virtual
environment without tfmetric (`user_install.user_venv`: this interpreter's
packages, tfmetric excluded) whose kernel spec is written to a temporary
JUPYTER_PATH; pip is pointed at the sdist and wheel built from this checkout
(`PIP_FIND_LINKS`, no index), so the install cell installs the wheel, and a
notebook that cannot install (unknown extra, missing dependency, file missing
from the package) fails.
"""

import configparser
import glob
import json
import os
import re

import pytest
import user_install

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colab", "*.ipynb")))
# Notebooks whose point is to show plots: they must produce images.
WITH_PLOTS = {
    "triplet_quickstart.ipynb": 3,
    "arcface.ipynb": 3,
    "siamese_one_shot.ipynb": 1,
    "similar_items.ipynb": 1,
    "face_verification.ipynb": 1,
    "self_supervised.ipynb": 1,
}
# The notebook run as users run it, at XLA's defaults; the others get the tests' compile flags
# (conftest.py: same HLO programs, compiled in less CPU time; 15-20% of a notebook's run).
AT_XLA_DEFAULTS = "triplet_quickstart.ipynb"
# Numbers a notebook prints that must reach a target.
TARGETS = {
    "siamese_one_shot.ipynb": [
        (r"ROC AUC \(contrastive, euclidean distance\): ([0-9.]+)", 0.98),
        (r"ROC AUC \(TripletModel embedder\): ([0-9.]+)", 0.95),
    ],
    "face_verification.ipynb": [(r"Accuracy: ([0-9.]+) ±", 0.95), (r"ROC AUC: ([0-9.]+)", 0.98)],
}

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


INSTALL_CELL = re.compile(r'^# [^\n]*\n%pip install -q "tfmetric(\[([a-z,-]+)\])?"$')


def _extras():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    return set(config["options.extras_require"])


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    return user_install.dist_dir(tmp_path_factory)


@pytest.fixture
def kernel_venv(dist, tmp_path):
    """A fresh venv without tfmetric, as the `python3` kernel, first on JUPYTER_PATH."""
    venv = tmp_path / "venv"
    python = user_install.user_venv(venv)
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = user_install.pip_env(dist)
    env["JUPYTER_PATH"] = os.pathsep.join(
        filter(None, [str(tmp_path / "jupyter"), os.environ.get("JUPYTER_PATH")])
    )
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    yield os.path.realpath(venv)
    os.environ.clear()
    os.environ.update(saved)


def test_there_are_notebooks():
    names = [os.path.basename(n) for n in NOTEBOOKS]
    assert AT_XLA_DEFAULTS in names
    for name in WITH_PLOTS:
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_clean_and_opens_in_colab(path):
    notebook = nbformat.read(path, as_version=4)
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and "colab.research.google.com" in first.source
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    install = INSTALL_CELL.match(code[0].source)
    assert install, f"first code cell must be a comment and a `%pip install` of tfmetric; got {code[0].source!r}"
    extras = set(filter(None, (install[2] or "").split(",")))
    assert extras <= _extras(), f"unknown extras {sorted(extras - _extras())}"
    assert any("import tfmetric" in cell.source for cell in code[1:])
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "outputs must be cleared in git"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_without_error(path, kernel_venv, tmp_path):
    name = os.path.basename(path)
    if name != AT_XLA_DEFAULTS and os.environ.get("TFMETRIC_TEST_XLA_DEFAULTS") != "1":
        # kernel_venv's environment (restored after the test) has the user's XLA_FLAGS only.
        xla = os.environ.get("XLA_FLAGS", "").split()
        os.environ["XLA_FLAGS"] = " ".join([*xla, *user_install.xla_flags_for_tests()])
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            "import os\nimport tfmetric\nprint('TFMETRIC_FILE', tfmetric.__file__)\n"
            "print('XLA_FLAGS', repr(os.environ.get('XLA_FLAGS', '')))"
        )
    )
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    install_text = "".join(out.get("text", "") for out in code[0].outputs)
    assert "ERROR" not in install_text, install_text
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    last = "".join(out.get("text", "") for out in code[-1].outputs)
    used = re.search(r"TFMETRIC_FILE (\S+)", last)
    assert os.path.realpath(used[1]).startswith(kernel_venv + os.sep), "tfmetric not from the wheel"
    kernel_xla = set(re.search(r"XLA_FLAGS '([^']*)'", last)[1].split())
    if name == AT_XLA_DEFAULTS:
        assert not kernel_xla & set(user_install.TEST_XLA_FLAGS), kernel_xla
    elif os.environ.get("TFMETRIC_TEST_XLA_DEFAULTS") != "1":
        assert set(user_install.xla_flags_for_tests()) <= kernel_xla, kernel_xla
    if name in WITH_PLOTS:
        images = [out for out in outputs if "image/png" in out.get("data", {})]
        assert len(images) >= WITH_PLOTS[name]
    text = "".join(out.get("text", "") for out in outputs)
    for pattern, target in TARGETS.get(name, []):
        match = re.search(pattern, text)
        assert match, f"{name} did not print {pattern!r}"
        assert float(match[1]) >= target, f"{name}: {match[0]} < {target}"
