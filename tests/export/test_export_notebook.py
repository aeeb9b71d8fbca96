"""colab/export_and_serve.ipynb runs offline, and is stored without outputs."""

import os

import nbformat
import pytest

import tfmetric

NOTEBOOK = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(tfmetric.__file__))),
    "colab",
    "export_and_serve.ipynb",
)


def test_notebook_is_stored_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert "colab-badge.svg" in nb.cells[0].source
    assert "except ImportError" in nb.cells[1].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.slow
def test_notebook_runs(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "'retrieve_images'" in text and "Parity vs Keras" in text
    assert "on-device nearest labels" in text
