"""The rCM training loop: data, networks, resume, iterations, checkpoints, logging, preemption."""

import math
import signal
import time

import torch
from megatron.core import parallel_state
from torch.utils.data import DataLoader

from ..data.latent_shards import LatentShardDataset
from ..data.sampler import ResumableDistributedSampler
from ..losses.schedule import RCMSchedule
from ..parallel import ParallelConfig, current_device, parallel_context
from .arguments import validate
from .checkpointing import CheckpointManager, CheckpointNotFoundError
from .determinism import enable_deterministic_mode
from .logger import MetricsLogger, memory_metrics, reduce_diagnostics
from .networks import build_networks
from .noise import draw_noise
from .signals import PreemptionHandler
from .state import Progress, export_ema, load_state, sharded_state
from .step import fake_score_step, student_step


def _ignore_preemption(worker_id):
    # Slurm signals every process of the job: a data worker killed by it would abort the
    # iteration that the trainer is finishing before it saves
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def _collate(samples):
    return torch.stack([s["latent"] for s in samples]), torch.stack([s["embed"] for s in samples])


def data_loader(dataset, args, consumed_samples):
    sampler = ResumableDistributedSampler(
        len(dataset), args.micro_batch_size, parallel_state.get_data_parallel_rank(),
        parallel_state.get_data_parallel_world_size(), seed=args.seed, consumed_samples=consumed_samples)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers, collate_fn=_collate,
                      worker_init_fn=_ignore_preemption)


def _resume(args, nets):
    load_dir = args.load or args.save
    if load_dir and CheckpointManager(load_dir).latest_iteration() is not None:
        return load_state(CheckpointManager(load_dir), nets, args)
    if args.load:
        raise CheckpointNotFoundError(f"--load {args.load}: no checkpoint there")
    return Progress()


def train(args):
    """Run (or resume) training; returns the final Progress. ``args`` from ``arguments.parse_args``."""
    validate(args)
    if args.deterministic_mode:
        enable_deterministic_mode()
    parallel = ParallelConfig(args.tensor_model_parallel_size, args.context_parallel_size,
                              sequence_parallel=args.sequence_parallel)
    with parallel_context(parallel, seed=args.seed), PreemptionHandler() as preemption:
        device = current_device()
        dataset = LatentShardDataset(args.data_path)
        nets = build_networks(args, device)
        schedule = RCMSchedule(args.student_update_freq, args.tangent_warmup, args.scm_weight, args.dmd_weight)
        progress = _resume(args, nets)
        saver = CheckpointManager(args.save, args.keep_last) if args.save else None
        logger = MetricsLogger(args.log_jsonl, args.tensorboard_dir, args.log_interval)
        dtype = nets.student.module.config.params_dtype
        patch = nets.student.module.config.patch_size
        first_sample = parallel_state.get_data_parallel_rank() * args.micro_batch_size
        batches = iter(data_loader(dataset, args, progress.consumed_samples))
        try:
            while progress.iteration < args.train_iters:
                start = time.perf_counter()
                latent, embed = next(batches)
                x0, text = latent.to(device, dtype), embed.to(device, dtype)
                it = progress.iteration
                noise = draw_noise(args.seed, it, first_sample, x0.shape[0], x0.shape[1:], args, device, dtype)
                if schedule.updates_student(it):
                    diagnostics, metrics = student_step(nets, schedule, (x0, text), noise, it,
                                                        progress.student_updates, args)
                    progress.student_updates += 1
                    network = "student"
                else:
                    diagnostics, metrics = fake_score_step(nets, (x0, text), noise, progress.critic_updates, args)
                    progress.critic_updates += 1
                    network = "fake_score"
                progress.iteration += 1
                progress.consumed_samples += args.global_batch_size
                record = {"network": network, **reduce_diagnostics(diagnostics), **metrics}
                seconds = time.perf_counter() - start
                tokens = args.global_batch_size * math.prod(s // p for s, p in zip(x0.shape[2:], patch))
                record.update(seconds=seconds, tokens_per_second=tokens / seconds, **memory_metrics())
                logger.log(progress.iteration, record, args.train_iters)

                stop = preemption.should_stop()
                periodic = args.save_interval and progress.iteration % args.save_interval == 0
                if saver and (stop or periodic or progress.iteration == args.train_iters):
                    saver.save(progress.iteration, sharded_state(nets, progress, args))
                if stop:
                    break
            if saver and progress.iteration == args.train_iters:
                export_ema(nets, progress.iteration, args)
        finally:
            logger.close()
    return progress
