"""Atomic writes: umask-based modes, nothing left behind on failure, stale temporaries."""

import errno
import json
import os
import stat
import subprocess
import sys
import time

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


def _dead_pid():
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout)


def _age(path, seconds):
    """Sets the modification time of `path` `seconds` into the past."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_every_writer_uses_one_pattern_that_names_process_and_host(tmp_path):
    with files.atomic_path(tmp_path / "a.npz") as tmp:
        assert files.is_temporary(tmp)
        assert os.path.basename(tmp).startswith(f".tmp-{os.getpid()}@{files._host_tag()}-")
        open(tmp, "w").close()
    directory = files.make_temporary_directory(tmp_path)
    assert files.is_temporary(directory)
    assert not files.is_temporary("a.npz")
    assert not files.is_temporary(".tmp-notapid")


def test_stale_temporaries_rules(tmp_path):
    dead, live, host = _dead_pid(), os.getpid(), files._host_tag()
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    names = {
        f".tmp-{dead}@{host}-old.npz": (60, True),  # killed writer, untouched: removed
        f".tmp-{dead}@{host}-new.npz": (0, True),  # its process is gone: removed at once
        f".tmp-{live}@{host}-old.npz": (3600, False),  # a live writer: never removed
        f".tmp-{dead}@{other_host}-a.npz": (3600, False),  # another host, 1 h: kept
        f".tmp-{dead}@{other_host}-b.npz": (3 * 86400, True),  # another host, 3 days: removed
        ".tmp-export-1-x": (3 * 86400, False),  # not the pattern
        "index.npz": (3 * 86400, False),
    }
    for name, (age, _) in names.items():
        (tmp_path / name).write_text("x")
        _age(tmp_path / name, age)
    stale_dir = tmp_path / f".tmp-{dead}@{host}-dir"
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "f").write_text("x")
    for path in (stale_dir / "sub" / "f", stale_dir / "sub", stale_dir):
        _age(path, 60)
    busy_dir = tmp_path / f".tmp-{dead}@{other_host}-busy"  # from elsewhere, idle for 3 days
    (busy_dir / "sub").mkdir(parents=True)
    _age(busy_dir, 3 * 86400)
    (busy_dir / "sub" / "f").write_text("being written")  # but a recent change inside: kept
    removed = files.remove_stale_temporaries(tmp_path)
    expected = sorted([n for n, (_, gone) in names.items() if gone] + [stale_dir.name])
    assert sorted(removed) == expected
    assert sorted(os.listdir(tmp_path)) == sorted(
        [n for n, (_, gone) in names.items() if not gone] + [busy_dir.name]
    )


def test_host_tag_tells_process_id_namespaces_apart(monkeypatch):
    tag = files._host_tag()
    assert len(tag) == 8 and tag == files._host_tag()
    monkeypatch.setattr(files.socket, "gethostname", lambda: "another-host")
    assert files._host_tag() != tag


def test_a_later_save_removes_what_a_killed_save_left(tmp_path):
    import numpy as np

    from tfmetric.index import ExactIndex

    stale = tmp_path / f".tmp-{_dead_pid()}@{files._host_tag()}-abcindex.npz"
    stale.write_bytes(b"half an index")
    index = ExactIndex()
    index.add(np.eye(3, dtype="float32"))
    index.save(tmp_path / "index.npz")
    assert os.listdir(tmp_path) == ["index.npz"]


# Loads files.py alone (importing the tfmetric package would import TensorFlow: seconds).
_KILLED_WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("files", sys.argv[2])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
with files.atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(60)
"""


def _writer_in_the_middle(path):
    """A subprocess stopped in the middle of an atomic write of `path`; returns it and its temp."""
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path), files.__file__],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    return process, process.stdout.readline().strip()


def test_really_killed_writer_is_cleaned_but_a_running_one_is_not(tmp_path):
    running, running_tmp = _writer_in_the_middle(tmp_path / "a.npz")
    killed, killed_tmp = _writer_in_the_middle(tmp_path / "b.npz")
    try:
        killed.kill()
        killed.wait()
        for tmp in (running_tmp, killed_tmp):
            _age(tmp, 3 * 86400)  # both untouched for days: the process decides, not the age
        files.write_text(tmp_path / "c.txt", "x")
        assert not os.path.exists(killed_tmp)
        assert os.path.exists(running_tmp)  # a concurrent writer's file is never removed
    finally:
        running.kill()
        running.wait()
        killed.stdout.close()
        running.stdout.close()
    assert not (tmp_path / "b.npz").exists()


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_replacing_a_file_keeps_its_mode(tmp_path, mode):
    path = tmp_path / "a.json"
    path.write_text("old")
    os.chmod(path, mode)
    files.write_json(path, {"new": 1})
    assert json.loads(path.read_text()) == {"new": 1}
    assert _mode(path) == mode


def test_errors_about_the_temporary_name_the_users_path(tmp_path):
    path = tmp_path / "index.npz"
    with pytest.raises(OSError) as caught:
        with files.atomic_path(path) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", tmp)  # as a writer reports it
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(path)
    assert ".tmp-" not in str(caught.value)
    missing = tmp_path / "missing" / "a.txt"
    with pytest.raises(FileNotFoundError, match="No such directory") as caught:
        files.write_text(missing, "x")
    assert caught.value.filename == str(missing) and ".tmp-" not in str(caught.value)
    assert os.listdir(tmp_path) == []
