"""Atomic file and directory writes with normal (umask-based) modes.

Everything is written under a temporary name in the target's own directory
and renamed over the target, so a reader never sees a partial file and a
killed writer leaves no truncated one. `tempfile` creates private paths
(0600 files, 0700 directories) and a rename keeps that mode; the helpers
give the published file or directory the mode a plain `open` or `os.mkdir`
would have (0666 / 0777 minus the umask), so another user (a TF Serving
container, a teammate) can read it.

Every temporary has one name pattern, `.tmp-<pid>@<host>-<random><suffix>`
(`<host>` a short hash of the host name and its process-id namespace):
`remove_stale_temporaries` finds them, and every atomic write and temporary
directory first removes the stale ones of its directory (left by a killed
writer: a killed `ExactIndex.save`, a killed export), so a later write cleans
what an earlier one left. A temporary is stale when its writer ran on this
host (in this process-id namespace) and is no longer running; one written
elsewhere (a shared directory, another container: its process id means
nothing here) only after `FOREIGN_STALE_AFTER_SECONDS` untouched. A
concurrent writer's temporary is never removed: its process is alive (or,
elsewhere, it is being written).

`read_npz` is the one reader of `.npz` archives: a missing, empty, truncated
or garbage file raises an error naming the file, never numpy's or zipfile's.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import zipfile

import numpy as np

TEMPORARY_PREFIX = ".tmp-"
FOREIGN_STALE_AFTER_SECONDS = 24 * 3600.0
_TEMPORARY = re.compile(r"\.tmp-([0-9]+)(?:@([0-9a-f]{8}))?-")


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


def _host_tag():
    """Where process ids mean the same: the host name and the process-id namespace."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # Linux: containers differ here
    except OSError:
        namespace = ""
    return hashlib.sha1(f"{socket.gethostname()}/{namespace}".encode()).hexdigest()[:8]


def _temporary_name():
    return f"{TEMPORARY_PREFIX}{os.getpid()}@{_host_tag()}-"


def is_temporary(name):
    """Whether a file or directory name is one of these temporaries (of any process)."""
    return _TEMPORARY.match(os.path.basename(os.fspath(name))) is not None


@contextlib.contextmanager
def atomic_path(path, makedirs=False):
    """Yields a temporary file path next to `path`; renames it to `path` on success.

    The temporary path ends with `path`'s base name, so writers that choose a
    format by suffix (`model.save`, `savefig`) see the right one. On success
    the file replaces `path` with the mode of the file it replaces (one the
    user made private stays private), or the umask-based mode for a new
    file; on any error it is removed and `path` is left as it was. An
    `OSError` about the temporary file is raised as one about `path`. Stale
    temporaries that killed writers left in the directory are removed first.

    Args:
        path: The file to write.
        makedirs: Create `path`'s directory if missing. Defaults to `False`
            (a missing directory raises `FileNotFoundError` naming `path`).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if makedirs:
        os.makedirs(directory, exist_ok=True)
    elif not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"No such directory {directory!r}", path)
    remove_stale_temporaries(directory)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=_temporary_name(), suffix=os.path.basename(path), dir=directory
        )
    except OSError as error:
        raise _about(error, path) from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _replaced_mode(path))
        os.replace(tmp, path)
    except OSError as error:
        if tmp not in (error.filename, error.filename2):
            raise
        raise _about(error, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _replaced_mode(path):
    """The permission bits of the regular file at `path`, or the umask-based mode."""
    try:
        status = os.stat(path)
    except OSError:
        return file_mode()
    return stat.S_IMODE(status.st_mode) if stat.S_ISREG(status.st_mode) else file_mode()


def _about(error, path):
    """`error` (an `OSError` about a temporary file) as the same error about `path`."""
    if error.errno is None:
        return error
    return type(error)(error.errno, error.strerror or os.strerror(error.errno), path)


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


def directory_problem(path):
    """Why `path` cannot be used as a directory to write into, or `None` if it can.

    `path` may be missing: then its nearest existing ancestor must be a
    writable directory (so that it can be created).

    Returns:
        `None`, or a short reason naming the path at fault, such as
        `"'/data/notes.txt' is not a directory"`.
    """
    path = os.path.abspath(os.fspath(path))
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing!r} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing!r} is not writable"
    return None


def make_temporary_directory(parent):
    """Creates a temporary directory in `parent`, named for this process.

    Stale temporaries that killed writers left in `parent` are removed first.
    """
    remove_stale_temporaries(parent)
    return tempfile.mkdtemp(prefix=_temporary_name(), dir=parent)


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


def remove_stale_temporaries(directory, now=None):
    """Removes the temporaries in `directory` that killed writers left behind.

    A temporary (`.tmp-<pid>@<host>-...`) is stale when its process ran on
    this host (same process-id namespace) and is no longer running; one from
    elsewhere when nothing in it changed for `FOREIGN_STALE_AFTER_SECONDS`.
    Those of running processes (this one included) are kept: they may be
    writing right now; so are entries of any other name.

    Args:
        directory: The directory to clean (a missing one is ignored).
        now: The current time (`time.time()`); for tests.

    Returns:
        The names removed.
    """
    removed = []
    try:
        entries = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time() if now is None else now
    host = _host_tag()
    for entry in entries:
        match = _TEMPORARY.match(entry)
        if match is None:
            continue
        pid, entry_host = int(match.group(1)), match.group(2)
        path = os.path.join(directory, entry)
        if entry_host in (None, host):
            if _alive(pid):
                continue
        elif _last_change(path) > now - FOREIGN_STALE_AFTER_SECONDS:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(entry)
    return removed


def _last_change(path):
    """The latest modification time of `path` or of anything under it (0 if gone)."""
    try:
        latest = os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0
    if os.path.isdir(path) and not os.path.islink(path):
        for root, directories, names in os.walk(path):
            for name in directories + names:
                with contextlib.suppress(FileNotFoundError):
                    latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
    return latest


def read_npz(path, name="path"):
    """Reads every array of an `.npz` archive (no pickles), with errors naming the file.

    Args:
        path: The `.npz` file.
        name: The argument `path` was given as, named in the errors.

    Returns:
        A dict `{key: numpy array}`.

    Raises:
        TypeError: if `path` is not a path.
        FileNotFoundError: if `path` does not exist.
        ValueError: if it is a directory, or empty, truncated, not an `.npz`
            archive or holds pickled objects.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path to an .npz file; got {path!r}.")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"`{name}` file {path!r} does not exist.")
    if os.path.isdir(path):
        raise ValueError(f"`{name}` {path!r} is a directory, not an .npz file.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"`{name}` file {path!r} is empty (not an .npz archive).")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"`{name}` file {path!r} is not an .npz archive (truncated or corrupt)."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        reason = "it holds pickled objects" if "pickle" in str(error) else type(error).__name__
        raise ValueError(
            f"`{name}` file {path!r} is not a readable .npz archive (truncated or corrupt: "
            f"{reason}: {error})."
        ) from None


def load_keras_file(path, name="path", **kwargs):
    """`keras.saving.load_model(path, **kwargs)` with errors naming the file.

    A `.keras` file is a zip archive: an empty, truncated or garbage one is
    reported as corrupt (Keras says "File not found" for a file that exists).

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if it is not a readable `.keras` archive, or Keras cannot
            rebuild the model from it (the message carries Keras' reason).
    """
    import keras

    import tfmetric  # noqa: F401  (registers the serializable classes)

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"`{name}` file {path!r} does not exist.")
    if os.path.isdir(path):
        raise ValueError(f"`{name}` {path!r} is a directory, not a .keras file.")
    if path.endswith(".keras"):
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"`{name}` file {path!r} is corrupt or unreadable: not a .keras (zip) archive "
                "(empty, truncated or another format)."
            )
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (OSError, zipfile.BadZipFile, EOFError) as error:
            raise ValueError(f"`{name}` file {path!r} is corrupt or unreadable: {error}") from None
        if "config.json" not in names:
            raise ValueError(
                f"`{name}` file {path!r} is corrupt or unreadable: a zip archive without the "
                "config.json of a .keras file."
            )
    try:
        return keras.saving.load_model(path, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"`{name}` file {path!r} cannot be loaded as a Keras model: {error}") from None


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
