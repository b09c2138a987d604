"""``load_model(path)``: build the right model from a checkpoint folder, on one process or a TP/CP group;
``load_model_config(path)``: its config alone."""

import json
import os

from megatron.core import parallel_state

from .save_folder import latest_checkpoint_path

MODELS_KEY = "megatron_rcm_models"  # common-state key: {key prefix: {"class": ..., "config": architecture}}
SAMPLER_KEY = "sampler"  # common-state key of a student export: {"sigma_max": ..., "mid_times": [...]}


def _world_sizes():
    if not parallel_state.model_parallel_is_initialized():
        return 1, 1
    return (parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_context_parallel_world_size())


def _diffusers_config(path):
    """The config.json of a diffusers transformer folder (or of a pipeline folder's transformer/), or None."""
    for candidate in (os.path.join(path, "transformer", "config.json"), os.path.join(path, "config.json")):
        if os.path.isfile(candidate):
            try:
                with open(candidate) as f:
                    return json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{candidate} is not valid JSON ({e})") from e
    return None


def _read_weights(path):
    """``read_diffusers_folder``, a damaged weights file reported as a one-line ValueError."""
    from safetensors import SafetensorError

    from .models.weight_map import read_diffusers_folder

    try:
        return read_diffusers_folder(path)
    except SafetensorError as e:
        raise ValueError(f"{path}: damaged or truncated safetensors file ({e})") from e


def checkpoint_models(models: dict) -> dict:
    """The common-state entry that records the models of a distributed checkpoint: pass
    ``{key prefix: model config}`` (e.g. ``{"student.": cfg, "ema.": cfg}``) and merge the result into
    the state dict given to ``dist_checkpointing.save``; ``load_model`` then needs nothing else."""
    from .models import family_of_config

    return {MODELS_KEY: {prefix: {"class": family_of_config(config).model_class.__name__,
                                  "config": config.architecture()}
                         for prefix, config in models.items()}}


def recorded_sampler(path) -> dict:
    """The few-step sampler settings a Megatron checkpoint records under ``SAMPLER_KEY`` (a training
    run's ``ema_student`` export does), or {} for any other checkpoint."""
    from megatron.core import dist_checkpointing

    path = latest_checkpoint_path(path)
    if not os.path.isfile(os.path.join(path, "metadata.json")):
        return {}
    return dict(dist_checkpointing.load_common_state_dict(path).get(SAMPLER_KEY) or {})


def _resolved(path):
    """``path``, or the latest checkpoint of the save folder it names; (that path, whether it is a
    Megatron distributed checkpoint)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    path = latest_checkpoint_path(path)
    return path, os.path.isfile(os.path.join(path, "metadata.json"))


def _read_config(path, distributed, prefix, config_overrides):
    """(family, model config, model prefix) of the resolved checkpoint ``path``, from its config
    alone: a distributed checkpoint's common state, a diffusers folder's config.json."""
    from .models import family_of_diffusers, family_of_model_class

    if distributed:
        from megatron.core import dist_checkpointing

        records = dist_checkpointing.load_common_state_dict(str(path)).get(MODELS_KEY) or {}
        if prefix is None and len(records) == 1:
            (prefix,) = records
        if prefix not in records:
            raise ValueError(f"{path}: recorded models {sorted(records)}; pass one of them as model_prefix "
                             f"(--megatron-prefix in the tools; got {prefix!r})")
        family = family_of_model_class(records[prefix]["class"])
        build, architecture = family.config_class.from_architecture, records[prefix]["config"]
    else:
        architecture = _diffusers_config(path)
        if architecture is None:
            raise ValueError(f"{path} is neither a Megatron distributed checkpoint (metadata.json) nor a diffusers "
                             "transformer folder (config.json)")
        family = family_of_diffusers(architecture.get("_class_name"))
        build = family.config_from_diffusers
    tp, cp = _world_sizes()
    try:
        config = build(architecture, tensor_model_parallel_size=tp, context_parallel_size=cp, **config_overrides)
    except TypeError as e:
        raise ValueError(f"unknown config override ({e})") from e
    return family, config, prefix


def load_model_config(path, model_prefix=None, **config_overrides):
    """The model config ``load_model`` with these arguments builds its model from, read without the
    weights (a trainer reads it to prepare kernels before its models load)."""
    return _read_config(*_resolved(path), model_prefix, config_overrides)[1]


def load_model(path, model_prefix=None, **config_overrides):
    """A model of any family (``megatron_rcm.models``) from its diffusers transformer folder (or
    pipeline folder; ``WanTransformer3DModel``, ``CosmosTransformer3DModel``) or a Megatron
    distributed checkpoint that records its model config (``checkpoint_models``), or
    the latest checkpoint of a training save folder (``SAVE``, ``SAVE/ema_student``).

    Inside an initialised parallel context the model takes the groups' TP/CP sizes and loads this
    rank's slice (a distributed checkpoint needs that context). ``model_prefix`` picks one of several
    models recorded in a distributed checkpoint. ``config_overrides`` go to the family's config
    (``params_dtype``, ``sequence_parallel``, ``cp_comm_type``, recompute settings, ...).
    """
    path, distributed = _resolved(path)
    if distributed and not parallel_state.model_parallel_is_initialized():
        raise ValueError(f"{path} is a Megatron distributed checkpoint: load it inside "
                         "megatron_rcm.parallel.parallel_context()")
    family, config, prefix = _read_config(path, distributed, model_prefix, config_overrides)
    if distributed:
        from megatron.core import dist_checkpointing

        model = family.model_class(config)
        sharded = model.sharded_state_dict(prefix=prefix)
        state = dist_checkpointing.load(sharded, str(path))
        model.load_state_dict({key[len(prefix):]: state[key] for key in sharded})
        return model
    from .models.weight_map import load_diffusers_weights

    _cfg, state = _read_weights(path)
    try:
        return load_diffusers_weights(family.model_class(config), state)
    except KeyError as e:
        raise ValueError(f"{path}: {e.args[0]}") from e
