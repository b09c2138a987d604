"""examples/slurm/pretrain_rcm.sbatch on a real one-node Slurm (tests/slurm/cluster.py): submitted
unchanged except for CPU overrides on the sbatch command line, 2 tasks on gloo. ``scancel -s USR1``
after a periodic checkpoint reaches every process of the step, megatron-core's checkpoint helper
process and the data-loader workers included: the trainer saves, every task exits 75, the script
requeues the job, and the second run resumes; the JSONL log then equals an uninterrupted run's,
value for value."""

import os
import re
import subprocess
import sys
import time

import pytest

from ..training.tiny_setup import ROOT, make_inputs, read_jsonl, torchrun_command, torchrun_env
from .cluster import SlurmCluster, missing_requirements

SBATCH = ROOT / "examples" / "slurm" / "pretrain_rcm.sbatch"
ITERS = 12
SAVE_INTERVAL = 4
# what differs between two runs of the same computation
UNTIMED = ("seconds", "tokens_per_second")
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        # CI installs Slurm (.ci/run): there a missing Slurm is a failure, not a skip
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"real-Slurm test: {reason}")
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def _job_environment(inputs_dir, save):
    venv_bin = os.path.dirname(os.path.abspath(sys.executable))
    return dict(TEACHER=str(inputs_dir / "teacher"), DATA=str(inputs_dir / "data"),
                NEGATIVE=str(inputs_dir / "negative.pt"), SAVE=str(save), REPO=str(ROOT),
                PATH=f"{venv_bin}:{os.environ['PATH']}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                PYTHONWARNINGS="ignore", TRITON_INTERPRET="1")


def _wait(predicate, what, cluster, job_id, output, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        state = cluster.job(job_id)
        if state["JobState"] in ("FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY") or (
                time.monotonic() > deadline):
            pytest.fail(f"waiting for {what}: job {state['JobState']} (reason {state.get('Reason')}, "
                        f"exit {state.get('ExitCode')})\n{output.read_text()[-6000:] if output.exists() else ''}")
        time.sleep(0.1)


def _untimed(records):
    return [{k: v for k, v in r.items() if k not in UNTIMED and not k.startswith("memory/")} for r in records]


def test_usr1_after_a_periodic_save_requeues_and_resumes_exactly(cluster, tmp_path):
    flags = make_inputs(tmp_path / "inputs")
    save, output = tmp_path / "save", tmp_path / "job.out"
    cpu_overrides = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
                     f"--output={output}"]
    submit = cluster.command("sbatch", "--parsable", *cpu_overrides, str(SBATCH), str(flags[1]),
                             "--train-iters", str(ITERS), "--save-interval", str(SAVE_INTERVAL),
                             env_extra=_job_environment(tmp_path / "inputs", save))
    job_id = submit.stdout.strip().split(";")[0]
    # meanwhile the uninterrupted run, on the same layout (2 data-parallel ranks)
    reference_log, reference_err = tmp_path / "reference.jsonl", tmp_path / "reference.err"
    with open(reference_err, "w") as err:
        reference = subprocess.Popen(
            torchrun_command(2, [*flags, "--train-iters", str(ITERS), "--log-jsonl", str(reference_log)]),
            env=torchrun_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        first = save / f"iter_{SAVE_INTERVAL:07d}" / "metadata.json"
        _wait(first.exists, "the first periodic checkpoint", cluster, job_id, output)
        cluster.command("scancel", "-s", "USR1", job_id)
        _wait(lambda: cluster.job(job_id)["JobState"] == "COMPLETED", "the requeued run to finish", cluster,
              job_id, output)
        assert reference.wait(timeout=300) == 0, reference_err.read_text()[-4000:]
    finally:
        if reference.poll() is None:
            reference.kill()

    job, text = cluster.job(job_id), output.read_text()
    assert job["Restarts"] == "1" and job["ExitCode"] == "0:0", (job, text[-4000:])
    # each task says where it stopped; the script requeues only when srun returned 75, and
    # --open-mode=append keeps the first run's lines
    stops = re.findall(r"(?:SIGUSR1|another rank's signal): stopped after iteration (\d+), saved it", text)
    assert len(stops) == 2 and stops[0] == stops[1], text[-4000:]
    assert SAVE_INTERVAL <= int(stops[0]) < ITERS
    assert text.count("preempted after saving a checkpoint") == 1, text[-4000:]
    assert f"iter {int(stops[0]) + 1}/{ITERS}" in text.split("preempted after saving")[1]
    assert not list(save.glob(".*.tmp")), "a temporary checkpoint folder was left behind"
    records = read_jsonl(save / "log.jsonl")
    assert [r["iteration"] for r in records] == list(range(1, ITERS + 1))
    assert _untimed(records) == _untimed(read_jsonl(reference_log))
