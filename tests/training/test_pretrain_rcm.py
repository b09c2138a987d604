"""examples/pretrain_rcm.py under torchrun on CPU: TP=2, CP=2, DP=2 runs equal the single-process
run; 3 + resume + 3 iterations equal 6 straight (same layout: exactly; from TP=2 to TP=1: to
rounding); SIGTERM or SIGUSR1 to one Slurm task mid-run saves a checkpoint on every rank, exits
with status 75, and the checkpoint resumes."""

import math
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from megatron.core import dist_checkpointing

from megatron_rcm.parallel.runtime import free_port
from megatron_rcm.testing import norm_relative_error
from megatron_rcm.training.checkpointing import TRACKER, CheckpointManager, checkpoint_name
from megatron_rcm.training.signals import PREEMPTED_EXIT_STATUS

from .tiny_setup import ROOT, SCRIPT, assert_close, compared, make_inputs, read_jsonl, torchrun, torchrun_env

ITERS = 6
# float32 through a different reduction order (TP splits, CP partial sums) for six iterations
LAYOUT_RTOL = 1e-6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def _run(inputs, folder, nproc, *extra):
    log = folder / "log.jsonl"
    torchrun(nproc, [*inputs, "--save", str(folder / "ckpt"), "--save-interval", "3", "--log-jsonl", str(log), *extra])
    return read_jsonl(log)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """Six iterations on one process (TP = CP = DP = 1)."""
    folder = tmp_path_factory.mktemp("reference")
    return folder, _run(inputs, folder, 1)


def test_single_process_run_logs_every_iteration(reference):
    folder, records = reference
    assert [r["iteration"] for r in records] == list(range(1, ITERS + 1))
    # tiny_cpu.yaml: warm-up of 1 iteration, then the student every 2nd iteration
    assert [r["network"] for r in records] == ["student", "fake_score"] * 3
    assert "loss/dmd" not in records[0] and "loss/dmd" in records[2]
    for r in records:
        for key in ("seconds", "tokens_per_second", "memory/host_rss_gib", f"{r['network']}/lr",
                    f"{r['network']}/grad_norm"):
            assert math.isfinite(r[key]) and r[key] >= 0, key
        assert all(math.isfinite(v) for v in compared([r])[0].values())
        # a batch of one latent of 2 x 4 x 4 at patch (1, 2, 2): 8 tokens per iteration
        assert r["tokens_per_second"] * r["seconds"] == pytest.approx(8, rel=1e-9)
        assert r[f"{r['network']}/skipped_nonfinite_loss"] == r[f"{r['network']}/skipped_nonfinite_grad"] == 0
    assert records[1]["fake_score/lr"] == 0.0 and records[3]["fake_score/lr"] > 0  # linear warm-up from 0
    assert CheckpointManager(folder / "ckpt").iterations() == [3, 6]
    assert (folder / "ckpt" / "ema_student" / checkpoint_name(ITERS) / "metadata.json").exists()
    # the counters a resume continues from (the rollout length and the critic's count are functions of them)
    progress = dist_checkpointing.load_common_state_dict(str(folder / "ckpt" / checkpoint_name(ITERS)))["progress"]
    assert progress == dict(iteration=ITERS, student_updates=3, critic_updates=3, consumed_samples=ITERS)


@pytest.mark.parametrize("layout", [["--tensor-model-parallel-size", "2"], ["--context-parallel-size", "2"]],
                         ids=["tp2", "cp2"])
def test_model_parallel_runs_equal_the_single_process_run(inputs, reference, tmp_path, layout):
    assert_close(_run(inputs, tmp_path, 2, *layout), reference[1], LAYOUT_RTOL)


def test_data_parallel_run_equals_one_process_with_the_same_global_batch(inputs, reference, tmp_path):
    dp2 = _run(inputs, tmp_path / "dp2", 2)
    single = _run(inputs, tmp_path / "single", 1, "--micro-batch-size", "2")
    assert dp2[0]["loss/student"] != pytest.approx(reference[1][0]["loss/student"])  # a batch of 2, not 1
    assert_close(dp2, single, LAYOUT_RTOL)


def _checkpoint_at(source, iteration, target):
    """A checkpoint folder whose latest (only) checkpoint is ``source``'s at ``iteration``."""
    target.mkdir(parents=True)
    shutil.copytree(source / checkpoint_name(iteration), target / checkpoint_name(iteration))
    (target / TRACKER).write_text(str(iteration))


def _ema_weights(checkpoint):
    from megatron_rcm import load_model
    from megatron_rcm.parallel import ParallelConfig, parallel_context

    with parallel_context(ParallelConfig()):
        return {name: p.detach() for name, p in load_model(str(checkpoint), model_prefix="ema.").named_parameters()}


def _final_ema(folder):
    """The EMA of the run's last checkpoint, loaded whole at TP 1."""
    from megatron_rcm.testing import run_distributed

    return run_distributed(_ema_weights, world_size=1, args=(folder / "ckpt" / checkpoint_name(ITERS),))[0]


def test_resume_at_the_same_layout_is_exact(inputs, reference, tmp_path):
    folder, straight = reference
    _checkpoint_at(folder / "ckpt", 3, tmp_path / "ckpt")
    # on CPU these flags change no number: the offloads copy between host tensors
    resumed = _run(inputs, tmp_path, 1, "--deterministic-mode", "--offload-ema", "--offload-teacher")
    assert [r["iteration"] for r in resumed] == [4, 5, 6]
    assert compared(resumed) == compared(straight[3:])
    # and the learning-rate schedules continue (the losses alone would not see the fake score's
    # schedule restart: its warm-up only shows in its last update's learning rate)
    assert [r[f"{r['network']}/lr"] for r in resumed] == [r[f"{r['network']}/lr"] for r in straight[3:]]
    ema, straight_ema = _final_ema(tmp_path), _final_ema(folder)
    assert ema.keys() == straight_ema.keys() and all(torch.equal(ema[k], straight_ema[k]) for k in ema)


def test_resume_at_another_tensor_parallel_size(inputs, reference, tmp_path):
    _, straight = reference
    first = _run(inputs, tmp_path / "tp2", 2, "--tensor-model-parallel-size", "2", "--train-iters", "3")
    assert_close(first, straight[:3], LAYOUT_RTOL)
    _checkpoint_at(tmp_path / "tp2" / "ckpt", 3, tmp_path / "tp1" / "ckpt")
    resumed = _run(inputs, tmp_path / "tp1", 1)
    assert_close(resumed, straight[3:], LAYOUT_RTOL)


def test_resume_at_another_data_parallel_size(inputs, tmp_path):
    """TP=2 x DP=2 (micro batch 2) resumed at TP=1 x DP=4 (micro batch 1): the same global batch,
    the optimizer state resharded over four data-parallel ranks."""
    straight = _run(inputs, tmp_path / "tp2dp2", 4, "--tensor-model-parallel-size", "2", "--micro-batch-size", "2")
    _checkpoint_at(tmp_path / "tp2dp2" / "ckpt", 3, tmp_path / "dp4" / "ckpt")
    resumed = _run(inputs, tmp_path / "dp4", 4, "--micro-batch-size", "1")
    assert_close(resumed, straight[3:], LAYOUT_RTOL)
    # the EMA, sharded over 2 ranks when saved and over 4 after the resume, ends where the straight run's does
    ema, straight_ema = _final_ema(tmp_path / "dp4"), _final_ema(tmp_path / "tp2dp2")
    assert ema.keys() == straight_ema.keys()
    assert all(norm_relative_error(ema[k], straight_ema[k]) < LAYOUT_RTOL for k in ema)


def _slurm_tasks(flags, ntasks):
    """The job step that ``srun`` starts: one process per task, placed by Slurm's variables only."""
    port = free_port()
    procs = []
    for task in range(ntasks):
        env = {k: v for k, v in torchrun_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(SLURM_PROCID=str(task), SLURM_NTASKS=str(ntasks), SLURM_LOCALID=str(task),
                   SLURM_JOB_NODELIST="localhost", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), *flags], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _signal_stream(procs):
    """SIGTERM and SIGUSR1 in turn to every live process until all exit (srun's SIGTERM after the
    first task exits, a second preemption notice, signals during the periodic and final saves)."""
    sent, deadline = 0, time.monotonic() + 120
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if sent % 2 else signal.SIGUSR1)
        sent += 1
        time.sleep(0.02)


@pytest.mark.parametrize("sig, stream", [(signal.SIGTERM, False), (signal.SIGUSR1, False), (signal.SIGUSR1, True)],
                         ids=["SIGTERM", "SIGUSR1", "then-a-stream-to-all"])
def test_signal_mid_run_saves_exits_75_and_resumes(inputs, tmp_path, sig, stream):
    """Slurm tasks: one rank gets the signal, every rank saves the same iteration and exits 75;
    also when every process then gets signal after signal, through periodic saves and the final one."""
    log = tmp_path / "log.jsonl"
    flags = [*inputs, "--save", str(tmp_path / "ckpt"), "--log-jsonl", str(log), "--train-iters", "1000",
             "--save-interval", "1" if stream else "1000"]
    procs = _slurm_tasks(flags, 2)
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and len(log.read_text().splitlines()) >= 3):
            dead = [p for p in procs if p.poll() is not None]
            assert not dead and time.monotonic() < deadline, dead[0].stdout.read() if dead else "timeout"
            time.sleep(0.05)
        procs[1].send_signal(sig)
        if stream:
            _signal_stream(procs)
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [PREEMPTED_EXIT_STATUS] * 2, [p.stdout.read()[-3000:] for p in procs]
    logged = read_jsonl(log)[-1]["iteration"]
    manager = CheckpointManager(tmp_path / "ckpt")
    assert manager.latest_iteration() == logged < 1000
    # one process with the same global batch (2) as the two data-parallel ranks
    resumed = _run(inputs, tmp_path, 1, "--train-iters", str(logged + 1), "--micro-batch-size", "2")
    assert resumed[-1]["iteration"] == logged + 1


def _exported_models(checkpoint, export):
    from megatron_rcm import load_model
    from megatron_rcm.parallel import ParallelConfig, parallel_context

    def weights(model):
        return {name: p.detach() for name, p in model.named_parameters()}

    with parallel_context(ParallelConfig()):
        ema = weights(load_model(str(export)))
        # the save folder's tracker names the latest export
        assert all(torch.equal(p, ema[k]) for k, p in weights(load_model(str(export.parent))).items())
        ema_in_training_checkpoint = weights(load_model(str(checkpoint), model_prefix="ema."))
        student = weights(load_model(str(checkpoint), model_prefix="student.model."))
        return ema, ema_in_training_checkpoint, student


def test_ema_export_loads_and_converts_to_diffusers(reference, tmp_path):
    from diffusers import WanTransformer3DModel

    from megatron_rcm.convert.api import convert_checkpoint
    from megatron_rcm.testing import run_distributed

    folder, _ = reference
    export = folder / "ckpt" / "ema_student" / checkpoint_name(ITERS)
    checkpoint = folder / "ckpt" / checkpoint_name(ITERS)
    ema, ema_in_checkpoint, student = run_distributed(_exported_models, world_size=1, args=(checkpoint, export))[0]
    assert ema.keys() == ema_in_checkpoint.keys() == student.keys()
    assert all(torch.equal(ema[k], ema_in_checkpoint[k]) for k in ema)
    assert any(not torch.equal(ema[k], student[k]) for k in ema), "the EMA must lag the student"
    # the export folder's tracker names the checkpoint to convert
    convert_checkpoint("megatron", "diffusers", export.parent, tmp_path / "diffusers", progress=False)
    assert sum(p.numel() for p in WanTransformer3DModel.from_pretrained(tmp_path / "diffusers").parameters()) > 0


def test_resuming_from_a_model_export_says_which_folder_to_pass(inputs, reference, tmp_path):
    export = reference[0] / "ckpt" / "ema_student"
    with pytest.raises(AssertionError, match="is a model export, not a training checkpoint: resume from the run's"):
        _run(inputs, tmp_path, 1, "--load", str(export))
    assert not (tmp_path / "ckpt").exists()
