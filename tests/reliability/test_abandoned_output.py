"""A conversion killed with SIGKILL cannot remove its temporary folder: the next atomic output to
the same path removes it (its writer's process is gone), and leaves a live writer's and another
host's alone."""

import os
import socket
import subprocess

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
