"""examples/slurm/pretrain_rcm.sbatch on a real one-node Slurm (tests/slurm/cluster.py): submitted
unchanged except for CPU overrides on the sbatch command line, 2 tasks on gloo. ``scancel -s USR1``
after a periodic checkpoint reaches every process of the step, megatron-core's checkpoint helper
process and the data-loader workers included: the trainer saves, every task exits 75, the script
requeues the job, and the second run resumes; the JSONL log then equals an uninterrupted run's,
value for value."""

import os
import time

import pytest

from ..training.tiny_setup import ROOT, make_inputs, read_jsonl, torchrun
from .cluster import SlurmCluster, missing_requirements

SBATCH = ROOT / "examples" / "slurm" / "pretrain_rcm.sbatch"
ITERS = 30
SAVE_INTERVAL = 3
# what differs between two runs of the same computation
UNTIMED = ("seconds", "tokens_per_second")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        # CI installs Slurm (.ci/run): there a missing Slurm is a failure, not a skip
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"real-Slurm test: {reason}")
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def _job_environment(inputs_dir, save):
    venv_bin = os.path.dirname(os.path.abspath(os.sys.executable))
    return dict(TEACHER=str(inputs_dir / "teacher"), DATA=str(inputs_dir / "data"),
                NEGATIVE=str(inputs_dir / "negative.pt"), SAVE=str(save), REPO=str(ROOT),
                PATH=f"{venv_bin}:{os.environ['PATH']}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                PYTHONWARNINGS="ignore",
                TRITON_INTERPRET="1")


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

    first = save / f"iter_{SAVE_INTERVAL:07d}" / "metadata.json"
    _wait(first.exists, "the first periodic checkpoint", cluster, job_id, output)
    cluster.command("scancel", "-s", "USR1", job_id)
    _wait(lambda: cluster.job(job_id)["JobState"] == "COMPLETED", "the requeued run to finish", cluster, job_id,
          output)

    job = cluster.job(job_id)
    text = output.read_text()
    assert job["Restarts"] == "1" and job["ExitCode"] == "0:0", (job, text[-4000:])
    # the script requeues only when srun returned 75; --open-mode=append keeps the first run's lines
    assert text.count("preempted after saving a checkpoint") == 1, text[-4000:]
    assert not list(save.glob(".*.tmp")), "a temporary checkpoint folder was left behind"
    records = read_jsonl(save / "log.jsonl")
    assert [r["iteration"] for r in records] == list(range(1, ITERS + 1))
    first_run = text.split("preempted after saving")[0]
    preempted_at = int(first_run.rsplit("iter ", 1)[1].split("/")[0])  # rank 0's last progress line
    assert SAVE_INTERVAL <= preempted_at < ITERS
    assert f"iter {preempted_at + 1}/{ITERS}" in text.split("preempted after saving")[1]

    reference_log = tmp_path / "reference.jsonl"
    torchrun(2, [*flags, "--train-iters", str(ITERS), "--log-jsonl", str(reference_log)])
    assert _untimed(records) == _untimed(read_jsonl(reference_log))
