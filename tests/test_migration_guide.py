"""docs/migration.md: every tfmetric (`python`) block runs, in order, as one program."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(REPO, "docs", "migration.md")


def _blocks():
    with open(GUIDE) as f:
        return re.findall(r"^```(\w*)\n(.*?)^```$", f.read(), re.S | re.M)


def test_guide_is_side_by_side_and_linked_from_readme():
    kinds = [kind for kind, _ in _blocks()]
    assert kinds.count("py") >= 6 and kinds.count("python") >= 8
    # Every "before" block (`py`, not run) is followed by its tfmetric counterpart.
    for i, kind in enumerate(kinds):
        if kind == "py":
            assert kinds[i + 1] == "python", f"block {i} has no tfmetric counterpart"
    assert set(kinds) == {"py", "python"}
    with open(os.path.join(REPO, "README.md")) as f:
        assert "docs/migration.md" in f.read()


@pytest.mark.slow
def test_every_tfmetric_block_runs(tmp_path):
    code = "\n\n".join(body for kind, body in _blocks() if kind == "python")
    script = tmp_path / "migration_guide.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # The lookup table and the calibration table were printed.
    assert re.search(r"query\s+rank\s+id\s+label\s+distance\s+payload", done.stdout)
    assert re.search(r"target\s+threshold\s+precision\s+recall\s+f1", done.stdout)
    assert (tmp_path / "index.npz").exists()
