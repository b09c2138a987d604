"""SIGKILL at many moments, aimed inside the writes, of the real processes that write checkpoints
and outputs: the trainer (examples/pretrain_rcm.py), the converter (tools/convert_checkpoint.py)
and the generator (examples/generate.py). After each kill the last good checkpoint or output is
intact, nothing partial stands where a final one belongs, and the same command run again ends
where an uninterrupted run does. Each test says how many of its kills landed inside a write.

The trainer runs as its own command. The converter and the generator run in children forked from
a server that imported them once (``ForkServer``; ``python -m tests.reliability.test_kill_anywhere``):
each child is a real process that runs the entry point as ``__main__`` and is killed with its
process group, but starts in a fraction of a second instead of the 5-10 s that importing torch,
megatron-core and diffusers takes: that is what allows a sweep of kills over writes of milliseconds.

Some moments last microseconds, too short to aim at from outside: the last tests kill there from
inside (while an old checkpoint is deleted; between the steps that replace an output).
"""

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import runpy
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ..training.tiny_setup import ROOT, SCRIPT, compared, make_inputs, read_jsonl, torchrun_env

pytestmark = pytest.mark.timeout(600)

ITERS, KEEP_LAST = 6, 2  # examples/configs/tiny_cpu.yaml
TRACKER = "latest_checkpointed_iteration.txt"
POLL = 0.001  # seconds between looks at a folder: a write of a few ms is seen, a core is not kept busy


# ---------------------------------------------------------------- processes, kills, outputs


def kill_group(pid):
    """SIGKILL the process group ``pid`` leads (the entry point and its helpers: data-loader workers,
    checkpoint writers, ffmpeg), as a node that goes down would."""
    with contextlib.suppress(ProcessLookupError):  # it has ended and was reaped meanwhile
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def running(proc):
    """``proc``, its process group killed on the way out if it still runs: a failed check leaves no run behind."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill_group(proc.pid)
            proc.wait()


def until(condition, ended, timeout=180):
    """Poll ``condition()`` until it holds (True) or ``ended()`` does (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if ended():
            return condition()
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill at"
        time.sleep(POLL)
    return True


def leftovers(parent, name):
    """Entries of ``parent`` other than ``name`` and a dead writer's ``.NAME.tmp-*`` (which the next
    write removes): a ``.NAME.old-*`` (an old output moved aside and left) or anything else."""
    return sorted(p.name for p in parent.iterdir() if p.name != name and not p.name.startswith(f".{name}.tmp-"))



def content(folder, skip=None):
    """Relative path -> digest of every file under ``folder`` ("folder" for a folder, empty ones
    included). A distributed checkpoint counts as the items its index names (its ``.metadata``
    records the folder it was written in and a random save id), leaving out those whose key starts
    with ``skip``."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_dir():
            out[name] = "folder"
        elif path.name == ".metadata":
            out.update({f"{name}:{key}": digest for key, digest in _items(path.parent, skip)})
        elif path.suffix != ".distcp":
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _items(checkpoint, skip):
    from torch.distributed.checkpoint import FileSystemReader

    for index, info in FileSystemReader(str(checkpoint)).read_metadata().storage_data.items():
        if skip is None or not index.fqn.startswith(skip):
            with open(checkpoint / info.relative_path, "rb") as f:
                f.seek(info.offset)
                yield f"{index.fqn}@{list(index.offset or [])}", hashlib.sha256(f.read(info.length)).hexdigest()


def whole(checkpoint):
    """Whether ``checkpoint`` loads as a whole: marked complete (metadata.json), its common state
    readable and naming its iteration, every byte its index points to present."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint import FileSystemReader

    if not (checkpoint / "metadata.json").exists():
        return False
    common = dist_checkpointing.load_common_state_dict(str(checkpoint))
    if "progress" in common and common["progress"]["iteration"] != int(checkpoint.name[len("iter_"):]):
        return False
    for info in FileSystemReader(str(checkpoint)).read_metadata().storage_data.values():
        part = checkpoint / info.relative_path
        if not part.exists() or part.stat().st_size < info.offset + info.length:
            return False
    return True


# ---------------------------------------------------------------- the trainer

# Two chains of runs of the same command, side by side in two folders: each run resumes from what
# the previous kill left and is killed further on, the last one finishes. A kill is armed when a
# path of the save folder appears (polled every ms), then waits: (what it aims at, the path, seconds).
TRAINER_CHAINS = [
    [("the first checkpoint's write (nothing saved before it)", ".iter_0000001.tmp", 0.0),
     ("iteration 3's checkpoint write", ".iter_0000003.tmp", 0.05)],
    [("iteration 4's rename, tracker update and deletion of iteration 2", "iter_0000004", 0.0),
     ("the EMA export's write", "ema_student/.iter_0000006.tmp", 0.0)],
]
# hidden: never loaded
DEBRIS = re.compile(r"\.iter_\d{7}\.(tmp|old|deleted)|\.latest_checkpointed_iteration\.txt\.tmp")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def start_trainer(inputs, folder):
    """The command under test (a save every iteration), alone in its process group; output into ``folder``."""
    command = [sys.executable, str(SCRIPT), *inputs, "--save", str(folder / "ckpt"), "--save-interval", "1",
               "--log-jsonl", str(folder / "log.jsonl")]
    # one process without MASTER_PORT rendezvous in memory: several run at once
    env = {k: v for k, v in torchrun_env().items() if k not in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with open(folder / "output.txt", "ab") as output:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output, start_new_session=True)


def finish(proc, folder):
    with running(proc):
        code = proc.wait(timeout=300)
    assert code == 0, (code, (folder / "output.txt").read_text()[-3000:])


def check_save_folder(save, keep_last=KEEP_LAST):
    """After a kill: every entry of ``save`` (and of its ema_student) is the tracker, a checkpoint that
    loads whole, or hidden debris that no run loads; the tracker names a checkpoint. Returns (the
    iteration a rerun resumes from, [what shows that the kill landed inside a save])."""
    if not save.exists():
        return 0, []
    names = sorted(p.name for p in save.iterdir())
    checkpoints = [n for n in names if re.fullmatch(r"iter_\d{7}", n)]
    debris = [n for n in names if DEBRIS.fullmatch(n)]
    assert set(names) - {TRACKER, "ema_student"} == {*checkpoints, *debris}, f"unexpected entries: {names}"
    tracked = int((save / TRACKER).read_text()) if (save / TRACKER).exists() else 0
    assert tracked == 0 or f"iter_{tracked:07d}" in checkpoints, f"{TRACKER} names {tracked}: {names}"
    partial = [n for n in checkpoints if not whole(save / n)]
    assert partial == [], f"partial: {partial} of {names}"
    evidence = [*debris, *(f"{n} not yet tracked" for n in checkpoints if int(n[len("iter_"):]) > tracked),
                *(f"{n} not yet deleted" for n in checkpoints[:-keep_last])]
    if (save / "ema_student").exists():
        evidence += [f"ema_student/{e}" for e in check_save_folder(save / "ema_student", keep_last=1)[1]]
    return tracked, evidence


def log_from(log, offset):
    """The records a run appended to ``log`` from byte ``offset``."""
    if not log.exists():
        return []
    with open(log, "rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f.read().splitlines()]


def check_resumed(records, resumed_from, reference):
    """A run's records start right after the iteration it resumed from and equal the uninterrupted run's."""
    assert [r["iteration"] for r in records] == list(range(resumed_from + 1, resumed_from + 1 + len(records)))
    assert compared(records) == compared(reference[resumed_from:resumed_from + len(records)])


def kill_trainer_at(inputs, folder, path, delay):
    """Run the command until ``path`` appears in the save folder, wait ``delay`` s, SIGKILL it."""
    with running(start_trainer(inputs, folder)) as proc:
        armed = until(lambda: (folder / "ckpt" / path).exists(), lambda: proc.poll() is not None)
        assert armed, f"it ended before {path} appeared: {(folder / 'output.txt').read_text()[-3000:]}"
        time.sleep(delay)
        kill_group(proc.pid)
        proc.wait()


def kill_chain(inputs, folder, kills):
    """Kill runs of the command in ``folder`` as ``kills`` says, checking the save folder after each,
    then run it to the end. Returns [(the iteration a run resumed from, its records)], [where each kill landed]."""
    folder.mkdir()
    log, resumed_from, runs, landed = folder / "log.jsonl", 0, [], []
    for aim, path, delay in kills:
        offset = log.stat().st_size if log.exists() else 0
        kill_trainer_at(inputs, folder, path, delay)
        runs.append((resumed_from, log_from(log, offset)))
        resumed_from, evidence = check_save_folder(folder / "ckpt")
        where = f"inside, left {', '.join(evidence)}" if evidence else "not inside a save"
        landed.append(f"aimed at {aim}: {where}; resumes from {resumed_from}")
    offset = log.stat().st_size if log.exists() else 0
    finish(start_trainer(inputs, folder), folder)
    runs.append((resumed_from, log_from(log, offset)))
    return runs, landed


def test_a_trainer_killed_anywhere_keeps_its_last_checkpoint_and_resumes_exactly(inputs, tmp_path):
    (tmp_path / "reference").mkdir()
    with running(start_trainer(inputs, tmp_path / "reference")) as reference:  # uninterrupted, alongside
        with ThreadPoolExecutor(len(TRAINER_CHAINS)) as pool:
            chains = list(pool.map(kill_chain, [inputs] * len(TRAINER_CHAINS),
                                   [tmp_path / f"chain{i}" for i in range(len(TRAINER_CHAINS))], TRAINER_CHAINS))
        finish(reference, tmp_path / "reference")
    straight = read_jsonl(tmp_path / "reference" / "log.jsonl")
    assert [r["iteration"] for r in straight] == list(range(1, ITERS + 1))
    # the same checkpoints and EMA export, no debris left; the RNG states differ (the data loader
    # draws its seed from torch's at every start) and are not where the training noise comes from
    expected = content(tmp_path / "reference" / "ckpt", skip="rng_state")
    for i, (runs, _) in enumerate(chains):
        for resumed_from, records in runs:
            check_resumed(records, resumed_from, straight)
        assert resumed_from + len(records) == ITERS, "the last run did not finish the training"
        assert content(tmp_path / f"chain{i}" / "ckpt", skip="rng_state") == expected
    landed = [line for _, lines in chains for line in lines]
    inside = sum(": inside" in line for line in landed)
    print(f"\n{inside} of {len(landed)} trainer kills landed inside a save:\n  " + "\n  ".join(landed))
    assert inside > 0, "no kill landed inside a save:\n" + "\n".join(landed)


# ---------------------------------------------------------------- the converter and the generator

CONVERT, GENERATE = "tools/convert_checkpoint.py", "examples/generate.py"
# what the children import lazily, imported once in the server (diffusers and transformers load
# their model classes on first use: seconds each)
PRELOAD = [CONVERT, GENERATE, "megatron_rcm.training.checkpointing", "diffusers:AutoencoderKLWan",
           "transformers:UMT5EncoderModel", "transformers:T5Tokenizer", "imageio_ffmpeg"]
# kill delays after the arming moment, as fractions of the write's length in an uninterrupted run
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
PROMPTS = ["a red fox runs across a snowy field at dawn", "waves crash against black rocks under a grey sky",
           "a child flies a yellow kite on the beach"]


@pytest.fixture(scope="module")
def server():
    srv = ForkServer(PRELOAD)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random tiny diffusers transformer, and the same as a Megatron checkpoint."""
    from megatron_rcm.convert.api import convert_checkpoint

    from ..convert.checkpoints import random_diffusers

    folder = tmp_path_factory.mktemp("checkpoints")
    _, diffusers = random_diffusers(folder)
    convert_checkpoint("diffusers", "megatron", diffusers, folder / "megatron", progress=False)
    return {"diffusers": diffusers, "megatron": folder / "megatron"}


@pytest.fixture(scope="module")
def pipeline():
    from tests.wan_pipeline import tiny_wan_pipeline

    return tiny_wan_pipeline()


def temporary(out, pid):
    """The temporary folder of ``out`` that the process ``pid`` writes (atomic_output names it so)."""
    return next(out.parent.glob(f".{out.name}.tmp-*-{pid}-*"), None)


def holds(folder, files):
    return folder is not None and len(list(folder.iterdir())) >= files


def write_window(server, script, argv, out, files, log):
    """Run uninterrupted; seconds from the moment its temporary folder holds ``files`` files to
    ``out``'s appearance (at least two polls)."""
    pid = server.start(script, argv, log)
    began = until(lambda: holds(temporary(out, pid), files) or out.exists(), server.ended)
    start = time.monotonic()
    until(out.exists, server.ended)
    window = time.monotonic() - start if began else 0.0
    assert server.wait() == 0, Path(log).read_text()[-3000:]
    return max(window, 2 * POLL)


def kill_write(server, script, argv, out, files, delay, log):
    """Run until its temporary folder holds ``files`` files (or ``out``, if new, does: a writer that
    writes in place is killed mid-write too), wait ``delay`` s and SIGKILL it. Returns where the kill
    landed: "inside" (its temporary folder left) or "after"."""
    new = not out.exists()
    pid = server.start(script, argv, log)

    def written():
        return holds(temporary(out, pid), files) or (new and out.exists() and holds(out, files))

    if until(written, server.ended):
        time.sleep(delay)
        kill_group(pid)
    status = server.wait()
    assert status in (0, -signal.SIGKILL), Path(log).read_text()[-3000:]
    return "inside" if status and temporary(out, pid) else "after"


def check_output(out, expected, present=False, allowed=()):
    """``out`` is absent (unless ``present``) or equal to the uninterrupted output; beside it at most
    a dead writer's temporary folder (and the ``allowed`` names)."""
    assert out.exists() or not present, f"{out} is gone; beside it: {sorted(os.listdir(out.parent))}"
    left = [n for n in leftovers(out.parent, out.name) if n not in allowed]
    assert left == [], f"beside {out.name}: {left}"
    assert not out.exists() or content(out) == expected, f"{out} differs from the uninterrupted output"


def check_rerun(server, script, argv, out, expected, log, allowed=()):
    """The same command again writes ``out`` whole; the dead writers' temporary folders are gone."""
    server.run(script, argv, log)
    check_output(out, expected, present=True, allowed=allowed)
    assert sorted(set(os.listdir(out.parent)) - set(allowed)) == [out.name], "debris left after the rerun"


def sweep(server, script, argv, out, expected, files, window, log):
    """Kill runs of ``argv`` (writing ``out``, which must not exist) at delays over the write's
    ``window``; after each, check ``out``; where it is absent, run the same command again.
    Returns where each kill landed."""
    landed = []
    for fraction in FRACTIONS:
        landed.append(kill_write(server, script, argv, out, files, fraction * window, log))
        check_output(out, expected)
        if not out.exists():
            check_rerun(server, script, argv, out, expected, log)
        shutil.rmtree(out)  # the next kill writes afresh
    return landed


def sweep_replacing(server, script, argv, out, expected, files, window, log):
    """The same with ``out`` present and replaced (``argv`` asks for it): after every kill ``out`` is
    there and whole (the old one or the new one, equal); then a rerun replaces it."""
    landed = []
    for fraction in FRACTIONS:
        landed.append(kill_write(server, script, argv, out, files, fraction * window, log))
        check_output(out, expected, present=True)
    check_rerun(server, script, argv, out, expected, log)
    return landed


def kill_sweeps(server, script, argv, replace_flag, files, folder):
    """An uninterrupted run (the reference and the write's length), then both sweeps; returns where the kills landed."""
    log, reference = folder / "log.txt", folder / "reference" / "out"
    window = write_window(server, script, argv(reference), reference, files, log)
    expected = content(reference)
    fresh, replaced = folder / "fresh" / "out", folder / "replaced" / "out"
    landed = sweep(server, script, argv(fresh), fresh, expected, files, window, log)
    shutil.copytree(reference, replaced)
    return landed + sweep_replacing(server, script, argv(replaced, replace_flag), replaced, expected, files, window,
                                    log)


def report(what, landed):
    inside = landed.count("inside")
    print(f"\n{what}: {inside} of {len(landed)} kills landed inside the write ({', '.join(landed)})")
    assert inside > 0, f"{what}: no kill landed inside the write"


@pytest.mark.parametrize("source, target", [("diffusers", "megatron"), ("megatron", "diffusers")])
def test_a_conversion_killed_anywhere_leaves_the_whole_output_or_none(server, checkpoints, tmp_path, source,
                                                                      target):
    """Armed when the temporary output folder appears; the tensors stream into it until the rename."""
    def argv(out, *extra):
        return ["--from", source, "--to", target, "--input", checkpoints[source], "--output", out, "--no-progress",
                *extra]

    report(f"{source} -> {target}", kill_sweeps(server, CONVERT, argv, "--overwrite", 0, tmp_path))


def test_a_generation_killed_while_writing_leaves_the_whole_videos_or_none(server, pipeline, tmp_path):
    """Three prompts, armed at the first file written: the kills land in the mp4, json and latents
    writes and in the sampling between them."""
    pytest.importorskip("imageio_ffmpeg", reason="install the 'data' extra to write mp4s")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))

    def argv(out, *extra):
        return ["--pipeline", pipeline, "--checkpoint", pipeline / "transformer", "--prompts", tmp_path / "prompts.txt",
                "--height", "32", "--width", "32", "--num-frames", "5", "--steps", "2", "--seed", "3",
                "--save-latents", "--output", out, "--no-progress", *extra]

    report("generate", kill_sweeps(server, GENERATE, argv, "--force", 1, tmp_path))
    assert len(list((tmp_path / "replaced" / "out").iterdir())) == 3 * len(PROMPTS)  # NAME.mp4, .json, .pt


# ---------------------------------------------------------------- kills at moments too short to aim at

# Moments of microseconds: a kill from outside lands there by chance only. These scripts kill their
# own process there (SIGKILL: no cleanup runs), in the real code. They show bugs.
KILLED_WHILE_DELETING = """
import os, re, shutil, signal, sys
import torch
from megatron.core.dist_checkpointing import ShardedTensor
from megatron_rcm.parallel import parallel_context
from megatron_rcm.training.checkpointing import CheckpointManager


def rmtree_killed(path, *args, **kwargs):  # an old checkpoint's deletion, killed after its first file
    if re.fullmatch(r"\\.?iter_\\d{7}(\\.deleted)?", os.path.basename(path)):
        os.unlink(next(os.scandir(path)).path)
        os.kill(os.getpid(), signal.SIGKILL)
    rmtree(path, *args, **kwargs)


if __name__ == "__main__":  # the checkpoint writer starts processes that import this file
    with parallel_context():
        manager = CheckpointManager(sys.argv[1], keep_last=1)
        manager.save(1, {"w": ShardedTensor.from_rank_offsets("w", torch.arange(4096.0))})
        rmtree, shutil.rmtree = shutil.rmtree, rmtree_killed
        manager.save(2, {"w": ShardedTensor.from_rank_offsets("w", torch.arange(4096.0) + 1)})
"""

# moment: "exchanged" (right after the names were swapped), or, as on a file system that cannot swap
# names, "aside" (the old output renamed aside) or "in" (then the new one renamed in)
KILLED_WHILE_REPLACING = """
import os, runpy, signal, sys
from megatron_rcm import atomic_output
exchange, rename, moment = atomic_output._exchange, os.rename, sys.argv.pop(1)


def exchange_killed(a, b):
    if moment != "exchanged":
        return False
    exchange(a, b)
    os.kill(os.getpid(), signal.SIGKILL)


def rename_killed(source, target, *args, **kwargs):
    rename(source, target, *args, **kwargs)
    aside, moved_in = ".old-" in os.path.basename(target), ".tmp-" in os.path.basename(source)
    if (moment == "aside" and aside) or (moment == "in" and moved_in):
        os.kill(os.getpid(), signal.SIGKILL)


atomic_output._exchange, os.rename = exchange_killed, rename_killed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_kill_while_an_old_checkpoint_is_deleted_leaves_no_partial_checkpoint(server, tmp_path):
    from megatron_rcm.training.checkpointing import CheckpointManager

    (tmp_path / "script.py").write_text(KILLED_WHILE_DELETING)
    server.start(tmp_path / "script.py", [tmp_path / "save"], tmp_path / "log.txt")
    assert server.wait() == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-3000:]
    assert (tmp_path / "save" / TRACKER).read_text() == "2"
    names = sorted(p.name for p in (tmp_path / "save").iterdir())
    assert names == sorted([".iter_0000001.deleted", TRACKER, "iter_0000002"]), names
    assert whole(tmp_path / "save" / "iter_0000002")
    CheckpointManager(tmp_path / "save", keep_last=1)  # the next run's manager removes the debris
    assert sorted(p.name for p in (tmp_path / "save").iterdir()) == sorted([TRACKER, "iter_0000002"])


@pytest.mark.parametrize("moment", ["exchanged", "aside", "in"])
def test_a_replacement_killed_between_its_steps_keeps_a_whole_output_and_no_debris(server, checkpoints, tmp_path,
                                                                                 moment):
    """Where names swap in one step the output is whole at every moment; where they cannot, a kill
    between the two renames leaves the old output aside until the next write puts it back."""
    out = tmp_path / "output" / "out"
    argv = ["--from", "diffusers", "--to", "megatron", "--input", checkpoints["diffusers"], "--output", out,
            "--no-progress", "--overwrite"]
    server.run(CONVERT, argv, tmp_path / "log.txt")
    expected = content(out)
    (tmp_path / "script.py").write_text(KILLED_WHILE_REPLACING)
    server.start(tmp_path / "script.py", [moment, ROOT / CONVERT, *argv], tmp_path / "log.txt")
    assert server.wait() == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-3000:]
    aside = sorted(p.name for p in out.parent.glob(".out.old-*"))
    assert len(aside) == (moment != "exchanged"), aside
    check_output(out, expected, present=moment != "aside", allowed=aside)
    check_rerun(server, CONVERT, argv, out, expected, tmp_path / "log.txt")


# ---------------------------------------------------------------- the fork server


class ForkServer:
    """A process that imported ``preload`` (modules, ``MODULE:NAME`` to load a lazy name, or scripts
    by path) and forks a child per run: ``start`` -> the child's pid (the leader of its own process
    group), ``ended``, ``wait`` -> its exit status (negative: the signal that ended it). Children run
    one at a time and are reaped at once, so a killed writer's pid is gone when the next write looks
    for dead writers' temporary folders."""

    def __init__(self, preload):
        env = dict(torchrun_env(), PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, *preload], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.child = None

    def _answer(self):
        line = self.proc.stdout.readline()
        assert line, f"the fork server exited with {self.proc.wait()}"
        return json.loads(line)

    def start(self, script, argv, log):
        request = {"script": str(ROOT / script), "argv": [str(a) for a in argv], "log": str(log)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.child = self._answer()["pid"]
        return self.child

    def ended(self):
        return bool(select.select([self.proc.stdout], [], [], 0)[0])

    def wait(self):
        self.child = None
        return self._answer()["status"]

    def run(self, script, argv, log):
        """Run to the end; its exit status must be 0."""
        self.start(script, argv, log)
        status = self.wait()
        assert status == 0, (status, Path(log).read_text()[-3000:])

    def close(self):
        if self.child is not None:  # a failed check left it running
            kill_group(self.child)
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _serve(preload):
    for name in preload:
        if name.endswith(".py"):  # a script: its top-level imports, under a name other than __main__
            spec = importlib.util.spec_from_file_location(Path(name).stem + "_preloaded", ROOT / name)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        else:
            module, _, attribute = name.partition(":")
            with contextlib.suppress(ImportError, AttributeError):  # not installed: its test skips itself
                loaded = importlib.import_module(module)
                if attribute:
                    getattr(loaded, attribute)
    for line in sys.stdin:
        assert threading.active_count() == 1, "forking a process with threads"
        pid = os.fork()
        if pid == 0:
            _child(**json.loads(line))
        _send(pid=pid)
        _send(status=os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))


def _send(**answer):
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def _child(script, argv, log):
    """Run ``script`` as ``python SCRIPT ARGV`` would, in a new process group, its output into ``log``."""
    code = 1
    try:
        os.setsid()
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.argv, sys.path[0] = [script, *argv], os.path.dirname(script)
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    _serve(sys.argv[1:])
