"""The built wheel installs into a fresh virtual environment and works from there.

This is the catch for files missing from the package: every module and data
file of the checkout's packages must be in the wheel, and everything must
import and run from the installed copy (not the checkout, not an editable
install).
"""

import json
import os
import subprocess
import tarfile
import zipfile

import pytest
import user_install

PACKAGES = ("tfmetric", "trainers", "export")

SMOKE = r"""
import importlib, json, os, pkgutil, sys
import numpy as np
import tfmetric
modules = []
for package in ("tfmetric", "trainers", "export"):
    root = importlib.import_module(package)
    modules.append(root.__name__)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name.endswith(".__main__"):  # programs, run below
            continue
        importlib.import_module(info.name)
        modules.append(info.name)
labels = np.array([0, 0, 1, 1])
embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]], "float32")
loss = float(tfmetric.losses.TripletLoss(margin=1.0, mining="hard")(labels, embeddings))
index = tfmetric.index.ExactIndex()
index.add(embeddings, labels=labels)
ids, _, _ = index.search(embeddings[:1], k=2)
print(json.dumps({
    "file": tfmetric.__file__, "version": tfmetric.__version__, "prefix": sys.prefix,
    "modules": modules, "loss": loss, "neighbours": ids.tolist(),
}))
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    return user_install.dist_dir(tmp_path_factory)


def _checkout_files():
    """Package files of the checkout (modules and data), relative to the repository."""
    files = set()
    for package in PACKAGES:
        for root, dirs, names in os.walk(os.path.join(user_install.REPO, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in names:
                if not name.endswith((".pyc", ".pyo")):
                    files.add(os.path.relpath(os.path.join(root, name), user_install.REPO))
    return files


def test_wheel_and_sdist_hold_every_package_file(dist):
    expected = _checkout_files()
    assert "tfmetric/__init__.py" in expected
    with zipfile.ZipFile(user_install.wheel_path(dist)) as wheel:
        in_wheel = set(wheel.namelist())
    assert sorted(expected - in_wheel) == []
    (sdist,) = [n for n in os.listdir(dist) if n.endswith(".tar.gz")]
    with tarfile.open(os.path.join(dist, sdist)) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert sorted(expected - in_sdist) == []
    assert {"setup.cfg", "pyproject.toml", "README.md"} <= in_sdist


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs(dist, tmp_path):
    python = user_install.user_venv(tmp_path / "venv")
    env = user_install.pip_env(dist)
    # The user's XLA settings, not the tests' compile flags (conftest.py: back end at level 0, elemental emitters).
    if os.environ.get("TFMETRIC_TEST_XLA_DEFAULTS") != "1":
        assert set(user_install.xla_flags_for_tests()) <= set(os.environ["XLA_FLAGS"].split())
    assert not set(user_install.TEST_XLA_FLAGS) & set(env.get("XLA_FLAGS", "").split())
    run = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True, "timeout": 300}
    before = subprocess.run([python, "-c", "import tfmetric"], **run)
    assert before.returncode != 0, "tfmetric must not be importable before the install"
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", user_install.wheel_path(dist)], **run
    )
    assert install.returncode == 0, install.stderr[-3000:]
    done = subprocess.run([python, "-c", SMOKE], **run)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    venv = os.path.realpath(tmp_path / "venv")
    assert os.path.realpath(report["file"]).startswith(venv + os.sep)
    assert not os.path.realpath(report["file"]).startswith(user_install.REPO + os.sep)
    assert "tfmetric.addons.losses.triplet" in report["modules"]
    assert "trainers.train" in report["modules"]
    # By hand, anchors at 0, 1, 1.5, 3: (0.5 + 1.5 + 2.0 + 0.5) / 4 with margin 1.
    assert report["loss"] == pytest.approx(1.125, abs=1e-5)
    assert report["neighbours"] == [[0, 1]]
    for program in ("trainers.train", "export"):
        cli = subprocess.run([python, "-m", program, "--helpshort"], **run)
        assert "Traceback" not in cli.stderr, cli.stderr[-3000:]
        assert "Try --helpfull" in cli.stdout
