"""colab/siamese_one_shot.ipynb runs offline, reaches its AUC target, and is stored without outputs."""

import os
import re

import nbformat
import pytest

import tfmetric

NOTEBOOK = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(tfmetric.__file__))),
    "colab",
    "siamese_one_shot.ipynb",
)


def test_notebook_is_stored_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert "colab-badge.svg" in nb.cells[0].source
    assert "except ImportError" in nb.cells[1].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.slow
def test_notebook_runs_and_reaches_auc(tmp_path):
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
    siamese = float(re.search(r"ROC AUC \(contrastive, euclidean distance\): ([0-9.]+)", text)[1])
    triplet = float(re.search(r"ROC AUC \(TripletModel embedder\): ([0-9.]+)", text)[1])
    assert siamese >= 0.98
    assert triplet >= 0.95
    assert any(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
