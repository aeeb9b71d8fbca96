"""tfmetric installed as a user installs it: from the wheel, in a virtual environment of its own.

`.ci/run` builds the sdist and the wheel (`python -m build`) and names their
folder in `TFMETRIC_DIST`; without it, `dist_dir` builds them once per test
session. `user_venv` creates a virtual environment that sees every package
installed beside this interpreter (TensorFlow, Keras, Jupyter, ...) except
tfmetric itself, so that only a real install — `pip install "tfmetric[...]"`
resolved against the built wheel — makes `import tfmetric` work there, and it
then imports the wheel's files, never the checkout.
"""

import glob
import os
import subprocess
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What conftest.py adds to XLA_FLAGS for the tests (`xla_flags_for_tests`), and `pip_env` leaves out.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def _version(*distributions):
    """`(major, minor)` of the first of `distributions` installed, or None."""
    import re
    from importlib import metadata

    for distribution in distributions:
        try:
            found = re.match(r"(\d+)\.(\d+)", metadata.version(distribution))
        except metadata.PackageNotFoundError:
            continue
        return (int(found[1]), int(found[2])) if found else (0, 0)
    return None


def xla_flags_for_tests():
    """The flags of `TEST_XLA_FLAGS` that the installed TensorFlow and jaxlib know.

    XLA aborts the process on a flag it does not know; the fusion-emitter
    switch is used with the versions it was checked on (TensorFlow 2.21,
    jaxlib 0.10) and later.
    """
    tensorflow = _version("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tf-nightly")
    jaxlib = _version("jaxlib")
    known = (tensorflow is None or tensorflow >= (2, 21)) and (jaxlib is None or jaxlib >= (0, 10))
    return TEST_XLA_FLAGS if known else TEST_XLA_FLAGS[:1]


_BUILT = {}


def dist_dir(tmp_path_factory):
    """The folder holding the sdist and the wheel of this checkout."""
    given = os.environ.get("TFMETRIC_DIST")
    if given:
        return os.path.abspath(given)
    if "dist" not in _BUILT:
        out = tmp_path_factory.mktemp("dist")
        subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), REPO],
            check=True,
            capture_output=True,
        )
        _BUILT["dist"] = str(out)
    return _BUILT["dist"]


def wheel_path(dist):
    (wheel,) = glob.glob(os.path.join(dist, "tfmetric-*.whl"))
    return wheel


def user_venv(path):
    """A virtual environment at `path` with this interpreter's packages, minus tfmetric.

    Returns its Python executable. Each installed distribution is linked into
    the environment's site-packages, apart from tfmetric's own entries (its
    package, metadata and editable-install hooks), so pip sees TensorFlow and
    the rest as installed and installs tfmetric itself into the environment.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = os.path.join(str(path), "bin", "python")
    target = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    sources = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for source in sorted(sources):
        for name in os.listdir(source):
            link = os.path.join(target, name)
            if "tfmetric" in name.lower() or os.path.lexists(link):
                continue
            os.symlink(os.path.join(source, name), link)
    return python


def pip_env(dist):
    """Environment variables making `pip install "tfmetric[...]"` use the built wheel, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_INDEX_URL")}
    # A user's XLA: the tests' compile flags (conftest.py) are not passed on.
    xla = [f for f in env.pop("XLA_FLAGS", "").split() if f not in TEST_XLA_FLAGS]
    if xla:
        env["XLA_FLAGS"] = " ".join(xla)
    env.update(
        {
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": dist,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
    )
    return env
