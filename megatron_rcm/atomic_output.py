"""Atomic folder output: a crash mid-write never leaves a folder that looks complete."""

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path


_interrupted = False  # set by note_interrupt, read before a temporary output is renamed into place


def note_interrupt():
    """Mark this process interrupted (``cli.interrupt_on_signals``' handler does, as a signal lands).
    A library may catch the KeyboardInterrupt the signal raised and go on (code that wraps every
    BaseException as an error to report later can); the final rename checks this mark instead."""
    global _interrupted
    _interrupted = True


def interrupted() -> bool:
    """Whether a signal marked this process interrupted (``note_interrupt``)."""
    return _interrupted


class OutputPathError(OSError):
    """The output cannot be written where it was asked for (messages start with the path)."""


class OutputExistsError(OutputPathError, FileExistsError):
    """The output path exists and replacing it was not asked for, or it is not a folder."""


@contextlib.contextmanager
def atomic_output_dir(path, overwrite=False):
    """Yield a temporary sibling folder of ``path``; rename it to ``path`` when the block succeeds.

    On error the temporary folder is removed and ``path`` is untouched. With ``overwrite`` an
    existing ``path`` is replaced only after the new folder is complete (moved aside, renamed in,
    then deleted), so at every moment one complete version exists on disk. A ``path`` that is not
    a folder is refused even so: a file where a folder output belongs is most likely a mistake.
    Raises ``OutputPathError`` before anything is written where ``path`` cannot be written.
    """
    path = Path(path)
    # os.path's tests say False where a parent may not be searched: making the folder then says why
    if os.path.exists(path) and (not overwrite or not os.path.isdir(path)):
        kind = "" if os.path.isdir(path) else " and is not a folder"
        raise OutputExistsError(f"{path} exists{kind}; choose another output path or remove it first")
    tmp = _make_temporary(path)
    try:
        os.chmod(tmp, new_dir_mode())
        yield tmp
        _fsync_tree(tmp)
        if interrupted():  # the block may have swallowed the interrupt: still no final output
            raise KeyboardInterrupt
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_temporary(path):
    """An empty temporary sibling folder of ``path`` (parents created), or ``OutputPathError``
    naming what is in the way (a folder without write permission, a file, a full disk)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_temporaries(path)
        return Path(tempfile.mkdtemp(prefix=f"{_temporary_prefix(path)}{socket.gethostname()}-{os.getpid()}-",
                                     dir=path.parent))
    except OSError as e:
        raise OutputPathError(f"{path} cannot be written: {_obstacle(path, e)}") from e


def nearest_existing(path) -> Path:
    """``path`` itself, or its nearest ancestor that exists (the one that decides whether it can be made)."""
    path = Path(path)
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path


def _obstacle(path, error):
    """The nearest existing ancestor of ``path`` (the one that refused) and why."""
    ancestor = nearest_existing(path.parent)
    if not os.path.isdir(ancestor):
        return f"{ancestor} is not a folder"
    return f"{error.strerror or error} ({ancestor})"


def _temporary_prefix(path):
    return f".{path.name}.tmp-"


def _remove_abandoned_temporaries(path):
    """Temporary siblings of ``path`` whose writer died without cleaning up (SIGKILL, a node that
    went down): their names carry the writer's host and process id; on this host, a folder whose
    process is gone is removed. Folders written from other hosts (shared file systems) are left."""
    prefix = _temporary_prefix(path)
    for folder in path.parent.glob(f"{prefix}*"):
        host, pid, _ = (folder.name[len(prefix):].rsplit("-", 2) + ["", ""])[:3]
        if host == socket.gethostname() and pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder):
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(root)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def new_file_mode() -> int:
    """The permissions ``open`` gives a new file under the current umask (``mkstemp`` gives 0600)."""
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    """The permissions ``mkdir`` gives a new folder under the current umask (``mkdtemp`` gives 0700)."""
    return 0o777 & ~_umask()


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to the file ``path`` through a temporary sibling renamed onto it: ``path``
    holds either its old content or all of ``data``, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def raised_while_interrupted(error) -> bool:
    """Whether ``error`` came from cleanup code that ran as a Ctrl-C (or SIGTERM) unwound: closing a
    half-written file can fail (torch.save's zip writer does) and hide the interrupt behind its error."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__context__
    return False
