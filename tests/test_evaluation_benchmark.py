"""benchmarks/evaluation.py's cases run (small n, in this process) and agree with faiss.

Nothing is timed here: the cases are run for their results, so that the
script that measures the evaluation targets keeps working, and the faiss
recipe (an independent k-nearest-neighbour search) checks the MAP@R family.
"""

import importlib.util
import os
import sys

import pytest

pytest.importorskip("faiss")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, filename):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "benchmarks", filename)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The script imports its neighbour `_results` as a top-level module (run as a script, its
# directory is on the path).
sys.modules.setdefault("_results", _load("_results", "_results.py"))
evaluation = _load("benchmarks_evaluation", "evaluation.py")

N = 600


@pytest.fixture(scope="module")
def results():
    cases = (
        "pml_family", "faiss_knn", "map_at_r", "retrieval", "exact_search", "faiss_flat",
        "clustering",
    )  # fmt: skip
    found = {case: evaluation._run_case(case, N) for case in cases}
    # The inverted file of ApproximateIndex starts at `ANN_MIN_SIZE` items.
    found["ann"] = evaluation._run_case("ann", evaluation.ANN_MIN_SIZE)
    return found


def test_every_case_reports_times_and_memory(results):
    for case, result in results.items():
        assert result["case"] == case
        assert result["n"] == (evaluation.ANN_MIN_SIZE if case == "ann" else N)
        assert result["seconds"] > 0 and result["cpu_seconds"] > 0
        assert result["peak_mib"] > 0 and result["added_mib"] >= 0
    for case in ("exact_search", "faiss_flat"):
        assert results[case]["warm_seconds"] > 0
    assert [row["nprobe"] for row in results["ann"]["probes"]] == [1, 8, 32]
    assert all(0.0 <= row["recall_at_10"] <= 1.0 for row in results["ann"]["probes"])


def test_map_at_r_family_matches_the_faiss_recipe(results):
    faiss_row = results["faiss_knn"]
    for case in ("pml_family", "map_at_r"):
        for metric in evaluation.PML_FAMILY:
            assert results[case][metric] == pytest.approx(faiss_row[metric], abs=1e-6)
    assert results["retrieval"]["map_at_r"] == pytest.approx(faiss_row["map_at_r"], abs=1e-6)


def test_table_lists_every_case(results):
    table = evaluation._table(list(results.values()))
    assert table.startswith(evaluation.SECTION)
    lines = table.splitlines()
    rows = [line for line in lines if f"| {N:,} × {N:,} |" in line or f"| {N:,} queries |" in line]
    assert len(rows) == len(results) - 1  # one row per case; `ann` has its own table
    probes = lines[lines.index("| nprobe | recall@10 vs exact | search time (s) |") + 2 :]
    assert [line.split(" | ")[0] for line in probes[:3]] == ["| 1", "| 8", "| 32"]
