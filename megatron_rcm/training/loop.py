"""The rCM training loop: data, networks, resume, iterations, checkpoints, logging, preemption."""

import math
import time

import torch
from megatron.core import parallel_state
from torch.distributed.checkpoint.api import CheckpointException
from torch.profiler import record_function
from torch.utils.data import DataLoader

from ..data.latent_shards import LatentShardDataset
from ..data.sampler import ResumableDistributedSampler
from ..parallel import current_device, parallel_context
from .batch_checks import NonFiniteBatches, all_finite, check_shapes
from .checkpointing import TRACKER, CheckpointManager, CheckpointNotFoundError, checkpoint_name
from .config import DataConfig, TrainingConfig
from .determinism import enable_deterministic_mode
from .logger import MetricsLogger, memory_metrics, reduce_diagnostics
from .networks import build_networks, start_warm_ups
from .noise import NoisePrefetcher
from .signals import preemption_handler, stop_loader_workers
from .state import Progress, check_training_checkpoint, export_ema, load_state, recipe_of, sharded_state
from .step import fake_score_step, student_step


def _collate(samples):
    """(latents, embeddings, whether both are finite): the check runs in the loader's workers, where
    it does not hold up the GPU at the start of an iteration."""
    latent, embed = torch.stack([s["latent"] for s in samples]), torch.stack([s["embed"] for s in samples])
    return latent, embed, all_finite(latent, embed)


def data_loader(dataset, data: DataConfig, seed, consumed_samples):
    """Batches in page-locked memory on CUDA, so that their copies to the device do not wait for it."""
    sampler = ResumableDistributedSampler(
        len(dataset), data.micro_batch_size, parallel_state.get_data_parallel_rank(),
        parallel_state.get_data_parallel_world_size(), seed=seed, consumed_samples=consumed_samples)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=data.num_workers, collate_fn=_collate,
                      pin_memory=torch.cuda.is_available())


def _unusable(manager, error):
    """The error for a latest checkpoint that does not load: it names the checkpoint and the way back
    to the previous one. No silent fallback: that would redo iterations the log already shows."""
    latest = manager.latest_iteration()
    path = manager.save_dir / checkpoint_name(latest)
    reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    earlier = [i for i in manager.iterations() if i < latest]
    way_back = (f"to resume from {checkpoint_name(earlier[-1])} instead, write {earlier[-1]} into "
                f"{manager.save_dir / TRACKER}" if earlier else "there is no earlier checkpoint")
    return CheckpointNotFoundError(f"{path} does not load ({type(error).__name__}: {reason}); {way_back}")


def _resume(config: TrainingConfig, networks):
    load_dir = config.checkpoint.load or config.checkpoint.save
    if load_dir and CheckpointManager(load_dir).latest_iteration() is not None:
        manager = CheckpointManager(load_dir)
        check_training_checkpoint(manager)
        try:
            return load_state(manager, networks, config)
        except (Exception, CheckpointException) as e:  # many types for a damaged file; DCP's is a BaseException
            raise _unusable(manager, e) from e
    if config.checkpoint.load:
        raise CheckpointNotFoundError(f"--load {config.checkpoint.load}: no checkpoint there")
    return Progress()


def _train_step(networks, config: TrainingConfig, progress: Progress, iteration, batch, noise):
    """The student's or the fake score's update of this iteration; returns (network, diagnostics, metrics)."""
    if config.rcm.updates_student(iteration):
        diagnostics, metrics = student_step(networks, config.rcm, batch, noise, iteration, progress.student_updates,
                                            config.optimization.clip_grad)
        progress.student_updates += 1
        return "student", diagnostics, metrics
    diagnostics, metrics = fake_score_step(networks, config.rcm, batch, noise, progress.critic_updates,
                                           config.optimization.clip_grad)
    progress.critic_updates += 1
    return "fake_score", diagnostics, metrics


def train(config: TrainingConfig, after_iteration=None):
    """Run (or resume) training; returns the final Progress. ``config`` from ``arguments.load_config``.

    ``after_iteration(progress)``, if given, is called after each iteration (``tools/profile_train.py``
    steps its profiler there). Each iteration runs in the profiler range ``rcm/iteration`` (the time
    its log's ``seconds`` counts), its batch and noise in ``rcm/data``; ``training.step`` names the rest.
    """
    if config.deterministic_mode:
        enable_deterministic_mode()
    rcm, data, checkpoint = config.rcm, config.data, config.checkpoint
    preemption = preemption_handler()  # before the data workers and checkpoint helpers start
    with parallel_context(config.parallel, seed=config.seed):
        device = current_device()
        start_warm_ups(config, device)
        dataset = LatentShardDataset(data.data_path)
        networks = build_networks(config, device)
        progress = _resume(config, networks)
        saver = CheckpointManager(checkpoint.save, checkpoint.keep_last) if checkpoint.save else None
        logger = MetricsLogger(config.logging.log_jsonl, config.logging.tensorboard_dir, config.logging.log_interval)
        student_config = networks.student.module.config
        dtype, patch = student_config.params_dtype, student_config.patch_size
        first_sample = parallel_state.get_data_parallel_rank() * data.micro_batch_size
        batches = iter(data_loader(dataset, data, config.seed, progress.consumed_samples))
        nonfinite = NonFiniteBatches(data.max_skipped_batches)
        noises = NoisePrefetcher()
        try:
            while progress.iteration < config.train_iters:
                start = time.perf_counter()
                with record_function("rcm/iteration"):
                    with record_function("rcm/data"):
                        latent, embed, finite = next(batches)
                        check_shapes(latent, embed, student_config.in_channels, student_config.text_dim, patch)
                        skip = nonfinite.skip(finite)
                        if not skip:
                            x0, text = (x.to(device, non_blocking=x.is_pinned()).to(dtype) for x in (latent, embed))
                            iteration = progress.iteration
                            noise = noises.draw(config.seed, iteration, first_sample, x0.shape[0], x0.shape[1:], rcm,
                                               device, dtype)
                    if skip:  # consumed, not trained on
                        progress.consumed_samples += data.global_batch_size
                        continue
                    batch = (x0, text)
                    network, diagnostics, metrics = _train_step(networks, config, progress, iteration, batch, noise)
                    progress.iteration += 1
                    progress.consumed_samples += data.global_batch_size
                    record = {"network": network, **reduce_diagnostics(diagnostics), **metrics,
                              "data/skipped_nonfinite_batches": nonfinite.skipped}
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
                if after_iteration:
                    after_iteration(progress)
            if saver and progress.iteration == config.train_iters:
                export_ema(networks, progress.iteration, config)
        finally:
            noises.close()
            stop_loader_workers(batches)
            logger.close()
    return progress
