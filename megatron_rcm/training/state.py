"""What a training checkpoint holds, as one sharded state dict, and how it is restored.

    student.model.*      student weights              (sharded like the model: loads at any TP/CP/DP)
    student.optimizer    Adam state (+ fp32 master weights on GPU), keyed like the weights
    student.scheduler    learning-rate schedule       (plain values: saved once)
    fake_score.*         the same for the fake-score network
    ema.*                the student's fp32 power EMA, whole and sharded like the weights (each
                         rank keeps a slice of it: ``ShardedPowerEMA``, resliced on loading)
    ema_updates, progress, layout, recipe   plain values: EMA count, iteration and counters,
                         the parallel layout it was saved at, the settings that fix the noise
                         and the data (seed, global batch and the whole ``RCMConfig``)
    rng                  per-rank RNG states (a ShardedObject per rank), restored only at the
                         same layout; elsewhere the ranks are reseeded. The training noise does
                         not come from these (see ``noise``), so either way the run is exact.
"""

import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from ..loading import SAMPLER_KEY, checkpoint_models
from ..losses.config import RCMConfig
from ..models import weight_map
from ..parallel import set_random_seed
from ..save_folder import EMA_EXPORT, CheckpointNotFoundError, checkpoint_name
from .checkpointing import CheckpointManager
from .config import TrainingConfig
from .optimizer import ensure_adam_state, load_optimizer_state

OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "fully_reshardable"}


@dataclass
class Progress:
    """How far a run has come; saved in each checkpoint and the base of the exact resume."""

    iteration: int = 0
    """Iterations trained, student and critic alike (a skipped non-finite batch is not one)."""

    student_updates: int = 0
    """Optimizer steps of the student (the EMA's step count too)."""

    critic_updates: int = 0
    """Optimizer steps of the fake score."""

    consumed_samples: int = 0
    """Samples the data loader has handed out over all data-parallel ranks: where it resumes."""


def layout():
    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "cp": parallel_state.get_context_parallel_world_size(),
            "dp": parallel_state.get_data_parallel_world_size(), "world": dist.get_world_size()}


def _rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_object():
    return ShardedObject("rng_state", _rng_state(), (dist.get_world_size(),), (dist.get_rank(),), replica_id=0)


def _strip_prefix(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def recipe_of(config: TrainingConfig) -> dict:
    """The settings a resumed run must share with the saved one, or its noise and data would differ."""
    return {"seed": config.seed, "global_batch_size": config.data.global_batch_size, **asdict(config.rcm)}


def sharded_state(networks, progress, recipe: dict, is_loading=False, with_rng=True):
    out = {}
    for name, net in (("student", networks.student), ("fake_score", networks.fake_score)):
        model = net.module.sharded_state_dict(prefix=f"{name}.model.")
        out[f"{name}.model"] = model
        ensure_adam_state(net.optimizer)
        out[f"{name}.optimizer"] = net.optimizer.sharded_state_dict(model, is_loading=is_loading,
                                                                   metadata=OPTIMIZER_FORMAT)
        out[f"{name}.scheduler"] = net.scheduler.state_dict()
    ema = networks.ema.empty_full_tensors() if is_loading else networks.ema.full_tensors()
    out["ema"] = weight_map.sharded_state_dict(networks.student.module, "ema.", tensors=ema)
    # load_model(checkpoint, model_prefix="ema.") and the converter read these models directly
    config = networks.student.module.config
    out.update(checkpoint_models({"student.model.": config, "fake_score.model.": config, "ema.": config}))
    out["ema_updates"] = networks.ema.num_updates
    out["progress"] = asdict(progress)
    out["layout"] = layout()
    out["recipe"] = recipe
    if with_rng:
        out["rng"] = _rng_object()
    return out


def _comparable(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_recipe(saved, current):
    # a key that an older checkpoint lacks had its default value when it was saved
    defaults = {f.name: f.default for f in fields(RCMConfig)}
    changed = {k: (saved.get(k, defaults.get(k)), v) for k, v in current.items()
               if _comparable(saved.get(k, defaults.get(k))) != _comparable(v)}
    if changed:
        raise ValueError("the checkpoint was trained with other settings (saved, now): "
                         + ", ".join(f"{k}={a!r} -> {b!r}" for k, (a, b) in changed.items()))


def check_training_checkpoint(manager):
    """``CheckpointNotFoundError`` unless the manager's latest checkpoint holds a training state: a
    model export (``SAVE/ema_student``) holds the weights alone."""
    path = manager.save_dir / checkpoint_name(manager.latest_iteration())
    if "recipe" not in dist_checkpointing.load_common_state_dict(str(path)):
        raise CheckpointNotFoundError(f"{path} is a model export, not a training checkpoint: resume from the run's "
                                      f"save folder (the one that holds {EMA_EXPORT}/)")


def load_state(manager, networks, config: TrainingConfig):
    """Restore everything from the manager's latest checkpoint; returns its Progress."""
    iteration = manager.latest_iteration()
    common = dist_checkpointing.load_common_state_dict(str(manager.save_dir / checkpoint_name(iteration)))
    current = recipe_of(config)
    _check_recipe(common["recipe"], current)
    same_layout = common["layout"] == layout()
    sharded = sharded_state(networks, Progress(), current, is_loading=True, with_rng=same_layout)
    loaded = manager.load(sharded, iteration)
    for name, net in (("student", networks.student), ("fake_score", networks.fake_score)):
        with torch.no_grad():
            net.module.load_state_dict(_strip_prefix(loaded[f"{name}.model"], f"{name}.model."), strict=True)
        load_optimizer_state(net.optimizer, loaded[f"{name}.optimizer"])
        net.scheduler.load_state_dict(loaded[f"{name}.scheduler"])
    networks.ema.load_full_tensors(_strip_prefix(loaded["ema"], "ema."))
    networks.ema.num_updates = loaded["ema_updates"]
    if same_layout:
        _set_rng_state(loaded["rng"])
    else:
        set_random_seed(config.seed + iteration)
    return Progress(**loaded["progress"])


def export_ema(networks, iteration, config: TrainingConfig):
    """The EMA student alone, under ``{save}/ema_student`` (collective): a Megatron distributed
    checkpoint that ``load_model`` and ``tools/convert_checkpoint.py --from megatron`` read as it is."""
    state = weight_map.sharded_state_dict(networks.student.module, "model.", tensors=networks.ema.full_tensors())
    state.update(checkpoint_models({"model.": networks.student.module.config}))
    state["teacher"] = config.teacher
    state[SAMPLER_KEY] = {"sigma_max": config.sigma_max, "mid_times": list(config.rcm.mid_times)}
    return CheckpointManager(Path(config.checkpoint.save) / EMA_EXPORT, keep_last=1).save(iteration, state)
