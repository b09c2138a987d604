"""The rCM training loop: data, networks, resume, iterations, checkpoints, logging, preemption."""

import math
import time

import torch
from megatron.core import parallel_state
from torch.utils.data import DataLoader

from ..data.latent_shards import LatentShardDataset
from ..data.sampler import ResumableDistributedSampler
from ..parallel import current_device, parallel_context
from .checkpointing import CheckpointManager, CheckpointNotFoundError
from .config import DataConfig, TrainingConfig
from .determinism import enable_deterministic_mode
from .logger import MetricsLogger, memory_metrics, reduce_diagnostics
from .networks import build_networks
from .noise import draw_noise
from .signals import preemption_handler, stop_loader_workers
from .state import Progress, export_ema, load_state, recipe_of, sharded_state
from .step import fake_score_step, student_step


def _collate(samples):
    return torch.stack([s["latent"] for s in samples]), torch.stack([s["embed"] for s in samples])


def data_loader(dataset, data: DataConfig, seed, consumed_samples):
    sampler = ResumableDistributedSampler(
        len(dataset), data.micro_batch_size, parallel_state.get_data_parallel_rank(),
        parallel_state.get_data_parallel_world_size(), seed=seed, consumed_samples=consumed_samples)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=data.num_workers, collate_fn=_collate)


def _resume(config: TrainingConfig, networks):
    load_dir = config.checkpoint.load or config.checkpoint.save
    if load_dir and CheckpointManager(load_dir).latest_iteration() is not None:
        return load_state(CheckpointManager(load_dir), networks, config)
    if config.checkpoint.load:
        raise CheckpointNotFoundError(f"--load {config.checkpoint.load}: no checkpoint there")
    return Progress()


def train(config: TrainingConfig):
    """Run (or resume) training; returns the final Progress. ``config`` from ``arguments.load_config``."""
    if config.deterministic_mode:
        enable_deterministic_mode()
    rcm, data, checkpoint = config.rcm, config.data, config.checkpoint
    preemption = preemption_handler()  # before the data workers and checkpoint helpers start
    with parallel_context(config.parallel, seed=config.seed):
        device = current_device()
        dataset = LatentShardDataset(data.data_path)
        networks = build_networks(config, device)
        progress = _resume(config, networks)
        saver = CheckpointManager(checkpoint.save, checkpoint.keep_last) if checkpoint.save else None
        logger = MetricsLogger(config.logging.log_jsonl, config.logging.tensorboard_dir, config.logging.log_interval)
        dtype = networks.student.module.config.params_dtype
        patch = networks.student.module.config.patch_size
        first_sample = parallel_state.get_data_parallel_rank() * data.micro_batch_size
        batches = iter(data_loader(dataset, data, config.seed, progress.consumed_samples))
        try:
            while progress.iteration < config.train_iters:
                start = time.perf_counter()
                latent, embed = next(batches)
                x0, text = latent.to(device, dtype), embed.to(device, dtype)
                iteration = progress.iteration
                noise = draw_noise(config.seed, iteration, first_sample, x0.shape[0], x0.shape[1:], rcm, device, dtype)
                if rcm.updates_student(iteration):
                    diagnostics, metrics = student_step(networks, rcm, (x0, text), noise, iteration,
                                                        progress.student_updates, config.optimization.clip_grad)
                    progress.student_updates += 1
                    network = "student"
                else:
                    diagnostics, metrics = fake_score_step(networks, rcm, (x0, text), noise, progress.critic_updates,
                                                           config.optimization.clip_grad)
                    progress.critic_updates += 1
                    network = "fake_score"
                progress.iteration += 1
                progress.consumed_samples += data.global_batch_size
                record = {"network": network, **reduce_diagnostics(diagnostics), **metrics}
                seconds = time.perf_counter() - start
                tokens = data.global_batch_size * math.prod(s // p for s, p in zip(x0.shape[2:], patch))
                record.update(seconds=seconds, tokens_per_second=tokens / seconds, **memory_metrics())
                logger.log(progress.iteration, record, config.train_iters)

                stop = preemption.should_stop()
                periodic = checkpoint.save_interval and progress.iteration % checkpoint.save_interval == 0
                if saver and (stop or periodic or progress.iteration == config.train_iters):
                    saver.save(progress.iteration, sharded_state(networks, progress, recipe_of(config)))
                if stop:
                    break
            if saver and progress.iteration == config.train_iters:
                export_ema(networks, progress.iteration, config)
        finally:
            stop_loader_workers(batches)
            logger.close()
    return progress
