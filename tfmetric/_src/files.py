"""Atomic file and directory writes with normal (umask-based) modes.

Everything is written under a temporary name in the target's own directory
and renamed over the target, so a reader never sees a partial file and a
killed writer leaves no truncated one. `tempfile` creates private paths
(0600 files, 0700 directories) and a rename keeps that mode; the helpers
give the published file or directory the mode a plain `open` or `os.mkdir`
would have (0666 / 0777 minus the umask), so another user (a TF Serving
container, a teammate) can read it.

Temporary names are `<prefix><pid>-<random>`; `remove_stale_temporaries`
deletes those left by a process that no longer runs.
"""

import contextlib
import json
import os
import shutil
import tempfile

TEMPORARY_PREFIX = ".tmp-"


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode():
    """The mode `open(path, "w")` gives a new file: 0666 minus the umask."""
    return 0o666 & ~_umask()


def directory_mode():
    """The mode `os.mkdir` gives a new directory: 0777 minus the umask."""
    return 0o777 & ~_umask()


def _temporary_name(prefix):
    return f"{prefix}{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path, prefix=TEMPORARY_PREFIX, makedirs=False):
    """Yields a temporary file path next to `path`; renames it to `path` on success.

    The temporary path ends with `path`'s base name, so writers that choose a
    format by suffix (`model.save`, `savefig`) see the right one. On success
    the file gets the umask-based mode and replaces `path`; on any error it
    is removed and `path` is left as it was.

    Args:
        path: The file to write.
        prefix: Start of the temporary file's name. Defaults to `".tmp-"`.
        makedirs: Create `path`'s directory if missing. Defaults to `False`
            (a missing directory raises `FileNotFoundError`).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if makedirs:
        os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=_temporary_name(prefix), suffix=os.path.basename(path), dir=directory
    )
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path, data, **kwargs):
    """Writes `data` to `path` atomically (see `atomic_path` for `kwargs`)."""
    with atomic_path(path, **kwargs) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path, text, **kwargs):
    """Writes `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"), **kwargs)


def write_json(path, obj, **kwargs):
    """Writes `obj` as indented JSON to `path` atomically.

    The object is serialised first, so an unserialisable one raises before
    anything is written.
    """
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", **kwargs)


def make_temporary_directory(parent, prefix=TEMPORARY_PREFIX):
    """Creates a temporary directory in `parent`, named for this process."""
    return tempfile.mkdtemp(prefix=_temporary_name(prefix), dir=parent)


def publish_directory(tmp_dir, target):
    """Renames a finished temporary directory to `target` with a umask-based mode.

    Files and directories inside were created with `open`/`os.makedirs` and
    already have normal modes; only the top directory (made by `mkdtemp`) is
    private. Its contents are synced before the rename.

    Raises:
        OSError: when `target` exists (the rename is not forced over it).
    """
    _fsync_tree(tmp_dir)
    os.chmod(tmp_dir, directory_mode())
    os.rename(tmp_dir, target)
    _fsync_directory(os.path.dirname(os.path.abspath(target)))


def give_normal_modes(path):
    """Gives a tree written under private temporaries the umask-based modes."""
    file_bits, directory_bits = file_mode(), directory_mode()
    for root, directories, names in os.walk(path):
        os.chmod(root, directory_bits)
        for name in directories:
            os.chmod(os.path.join(root, name), directory_bits)
        for name in names:
            os.chmod(os.path.join(root, name), file_bits)


def remove_stale_temporaries(directory, prefix=TEMPORARY_PREFIX):
    """Removes temporaries named `<prefix><pid>-...` whose process is gone.

    Those of running processes (this one included) are kept: they may be
    writing right now; so are entries whose name carries no process id.

    Returns:
        The names removed.
    """
    removed = []
    if not os.path.isdir(directory):
        return removed
    for entry in os.listdir(directory):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix) :].split("-")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(entry)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(path):
    for root, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    _fsync_directory(path)


def _fsync_directory(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
