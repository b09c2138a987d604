"""Atomic folder output: a crash mid-write never leaves a folder that looks complete."""

import contextlib
import ctypes
import errno
import os
import shutil
import socket
import tempfile
from pathlib import Path


_interrupted = False  # set by interrupt, read before a temporary output is renamed into place
_replacing = False  # between the steps of _replace: an interrupt waits for them (interrupt)


def interrupted() -> bool:
    """Whether a signal marked this process interrupted (``interrupt``)."""
    return _interrupted


def interrupt():
    """What a signal handler that stops the process does (``cli.interrupt_on_signals``): mark it
    interrupted and raise KeyboardInterrupt, at once, or where an older output is being replaced,
    once the new one is in place (raised between the steps, it would leave the old one aside). A
    library may catch the KeyboardInterrupt and go on (code that wraps every BaseException as an
    error to report later can); the final rename checks the mark instead."""
    global _interrupted
    _interrupted = True
    if not _replacing:
        raise KeyboardInterrupt


class OutputPathError(OSError):
    """The output cannot be written where it was asked for (messages start with the path)."""


class OutputExistsError(OutputPathError, FileExistsError):
    """The output path exists and replacing it was not asked for, or it is not a folder."""


@contextlib.contextmanager
def atomic_output_dir(path, overwrite=False):
    """Yield a temporary sibling folder of ``path``; rename it to ``path`` when the block succeeds.

    On error the temporary folder is removed and ``path`` is untouched. With ``overwrite`` an
    existing ``path`` is replaced only after the new folder is complete (``_replace``), so that a
    crash at any moment leaves one complete version at ``path``. A ``path`` that is not a folder is
    refused even so: a file where a folder output belongs is most likely a mistake.
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
        if path.exists():
            _replace(tmp, path)
        else:
            os.rename(tmp, path)
            _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp, path):
    """Put the complete folder ``tmp`` where the older output ``path`` is, then delete the older one;
    an interrupt (``interrupt``) waits until that is done. Where the file system swaps two names in
    one step (Linux's renameat2 with RENAME_EXCHANGE) ``path`` always holds a complete output.
    Elsewhere the old output is first renamed aside (``.NAME.old-HOST-PID``); if a kill comes before
    the new one is in, the next write to ``path`` puts it back (``_clean_up_after_dead_writers``)."""
    global _replacing
    _replacing = True
    try:
        if _exchange(tmp, path):
            _fsync_dir(path.parent)
            shutil.rmtree(tmp)  # the old output now
        else:
            _rename_aside_and_in(tmp, path)
    finally:
        _replacing = False
    if interrupted():
        raise KeyboardInterrupt


def _rename_aside_and_in(tmp, path):
    old = path.with_name(f"{_set_aside_prefix(path)}{socket.gethostname()}-{os.getpid()}")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(old)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a, b) -> bool:
    """Swap the names of the folders ``a`` and ``b`` in one step; False where the system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):  # not on this file system
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def _make_temporary(path):
    """An empty temporary sibling folder of ``path`` (parents created), or ``OutputPathError``
    naming what is in the way (a folder without write permission, a file, a full disk)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_up_after_dead_writers(path)
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


def _set_aside_prefix(path):
    return f".{path.name}.old-"


def _clean_up_after_dead_writers(path):
    """What writers of ``path`` that died (SIGKILL, a node that went down) left beside it, found by
    the host and process id in the names; on this host, where that process is gone: temporary
    folders are removed, and an older output set aside by ``_replace`` goes back to ``path`` if the
    new one never got there (else it is removed). Other hosts' folders (shared file systems) are left."""
    for folder in path.parent.glob(f"{_temporary_prefix(path)}*"):
        host, pid, _ = (folder.name[len(_temporary_prefix(path)):].rsplit("-", 2) + ["", ""])[:3]
        if _dead_writer(host, pid):
            shutil.rmtree(folder, ignore_errors=True)
    for folder in path.parent.glob(f"{_set_aside_prefix(path)}*"):
        host, _, pid = folder.name[len(_set_aside_prefix(path)):].rpartition("-")
        if _dead_writer(host, pid):
            if os.path.lexists(path):
                shutil.rmtree(folder, ignore_errors=True)
            else:
                os.rename(folder, path)


def _dead_writer(host, pid):
    return host == socket.gethostname() and pid.isdigit() and not _process_exists(int(pid))


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
