"""Atomic writes: umask-based modes, nothing left behind on failure, stale temporaries."""

import os
import stat
import subprocess
import sys

import pytest

from tfmetric._src import files


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_file_follows_the_umask(tmp_path, umask_027):
    files.write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert _mode(tmp_path / "a.json") == 0o640
    assert (tmp_path / "a.json").read_text() == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'
    assert os.listdir(tmp_path) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    files.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(TypeError):
        files.write_json(tmp_path / "a.txt", {"x": object()})
    with pytest.raises(RuntimeError):
        with files.atomic_path(tmp_path / "a.txt") as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_missing_directory_raises_unless_asked_to_create_it(tmp_path):
    with pytest.raises(FileNotFoundError):
        files.write_text(tmp_path / "missing" / "a.txt", "x")
    assert not (tmp_path / "missing").exists()
    files.write_text(tmp_path / "made" / "a.txt", "x", makedirs=True)
    assert (tmp_path / "made" / "a.txt").read_text() == "x"


def test_temporary_path_keeps_the_suffix(tmp_path):
    with files.atomic_path(tmp_path / "model.keras") as tmp:
        assert tmp.endswith("model.keras")
        assert os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "w").close()


def test_published_directory_follows_the_umask(tmp_path, umask_027):
    tmp = files.make_temporary_directory(tmp_path)
    assert _mode(tmp) == 0o700
    with open(os.path.join(tmp, "x"), "w") as f:
        f.write("1")
    files.publish_directory(tmp, tmp_path / "1")
    assert _mode(tmp_path / "1") == 0o750
    assert (tmp_path / "1" / "x").read_text() == "1"
    with pytest.raises(OSError):
        files.publish_directory(files.make_temporary_directory(tmp_path), tmp_path / "1")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    (tmp_path / f".tmp-{dead_pid}-abc").mkdir()
    (tmp_path / f".tmp-{dead_pid}-defreport.json").write_text("x")
    (tmp_path / f".tmp-{os.getpid()}-live").mkdir()
    (tmp_path / ".tmp-notapid").write_text("x")
    (tmp_path / "kept").write_text("x")
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([f".tmp-{dead_pid}-abc", f".tmp-{dead_pid}-defreport.json"])
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f".tmp-{os.getpid()}-live", ".tmp-notapid", "kept"]
    )
