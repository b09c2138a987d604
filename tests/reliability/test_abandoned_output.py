"""A conversion killed with SIGKILL cannot remove its temporary folder: the next atomic output to
the same path removes it (its writer's process is gone), and leaves a live writer's and another
host's alone. Where names cannot be swapped in one step, a replacement renames the old output aside
first: a signal there waits for the new one, and what a killed writer set aside goes back."""

import os
import socket
import subprocess
from pathlib import Path

import pytest

from megatron_rcm.atomic_output import atomic_output_dir


def test_the_next_write_removes_a_dead_writers_temporary_folder(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    abandoned = tmp_path / f".out.tmp-{host}-{dead.pid}-abc123"
    others = [tmp_path / f".out.tmp-{host}-{os.getpid()}-live01", tmp_path / f".out.tmp-elsewhere-{dead.pid}-abc123"]
    for folder in (abandoned, *others):
        folder.mkdir()
        (folder / "part").write_bytes(os.urandom(16))
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "weights").write_text("complete")
    assert sorted(tmp_path.iterdir()) == sorted([tmp_path / "out", *others])
    assert (tmp_path / "out" / "weights").read_text() == "complete"


def _replaced(tmp_path, monkeypatch, on_first_rename):
    """An output replaced where names cannot be swapped in one step (``_exchange`` says so), with
    ``on_first_rename()`` run right after the old output was renamed aside."""
    from megatron_rcm import atomic_output

    out = tmp_path / "out"
    out.mkdir()
    (out / "weights").write_text("old")
    rename, renames = os.rename, []

    def rename_and_act(source, target):
        rename(source, target)
        renames.append(Path(target).name)
        if len(renames) == 1:
            on_first_rename()

    monkeypatch.setattr(atomic_output, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", rename_and_act)
    return out, renames


def test_a_signal_between_the_renames_of_a_replacement_waits_until_the_new_output_is_in(tmp_path, monkeypatch):
    """The tools' SIGTERM and SIGINT handler stops a run by raising: between the steps of a
    replacement it raises once they are done, so the output is the new one and nothing is left beside it."""
    import signal

    from megatron_rcm import atomic_output, cli

    monkeypatch.setattr(atomic_output, "_interrupted", False)  # the mark the signal sets, for this test only
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    cli.interrupt_on_signals()
    try:
        out, renames = _replaced(tmp_path, monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(KeyboardInterrupt):
            with atomic_output_dir(out, overwrite=True) as tmp:
                (tmp / "weights").write_text("new")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert renames[0].startswith(".out.old-") and renames[1] == "out"
    assert sorted(os.listdir(tmp_path)) == ["out"] and (out / "weights").read_text() == "new"


def test_the_next_write_puts_back_an_output_a_dead_writer_had_set_aside(tmp_path, monkeypatch):
    out, renames = _replaced(tmp_path, monkeypatch, lambda: None)
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "weights").write_text("new")
    dead = subprocess.Popen(["true"])
    dead.wait()
    # as a writer killed between its renames leaves it: the old output aside, nothing at out
    os.rename(out, tmp_path / f".out.old-{socket.gethostname()}-{dead.pid}")
    monkeypatch.undo()
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "other"):  # any write to another path leaves it alone
            raise RuntimeError
    assert not out.exists()
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True):  # a write to out puts it back first
            raise RuntimeError
    assert sorted(os.listdir(tmp_path)) == ["out"] and (out / "weights").read_text() == "new"


def test_a_replacement_whose_new_output_cannot_be_renamed_in_puts_the_old_one_back(tmp_path, monkeypatch):
    """Where names cannot be swapped in one step, the old output is renamed aside first: if the new one
    then cannot take its name (an I/O error), the old one goes back, and the error is raised."""
    from megatron_rcm import atomic_output

    out = tmp_path / "out"
    out.mkdir()
    (out / "weights").write_text("old")
    rename, renames = os.rename, []

    def second_rename_fails(source, target):
        renames.append(Path(target).name)
        if len(renames) == 2:
            raise OSError(5, "Input/output error (injected)")
        rename(source, target)

    monkeypatch.setattr(atomic_output, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(OSError, match="injected"):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "weights").write_text("new")
    monkeypatch.undo()
    assert renames[0].startswith(".out.old-") and renames[1:] == ["out", "out"]
    assert sorted(os.listdir(tmp_path)) == ["out"] and (out / "weights").read_text() == "old"
