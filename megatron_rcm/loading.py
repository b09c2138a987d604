"""``load_model(path)``: build the right model from a checkpoint folder, on one process or a TP/CP group."""

import json
import os

from megatron.core import parallel_state


def _world_sizes():
    if not parallel_state.model_parallel_is_initialized():
        return 1, 1
    return (parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_context_parallel_world_size())


def _folder_format(path):
    for candidate in (os.path.join(path, "transformer", "config.json"), os.path.join(path, "config.json")):
        if os.path.isfile(candidate):
            with open(candidate) as f:
                return json.load(f).get("_class_name")
    return None


def load_model(path, **config_overrides):
    """A ``WanModel`` with the weights of a diffusers ``WanTransformer3DModel`` folder (or pipeline folder).

    Inside an initialised parallel context the model takes the groups' TP/CP sizes and loads this
    rank's slice. ``config_overrides`` go to ``WanConfig`` (``params_dtype``, ``sequence_parallel``,
    ``cp_comm_type``, recompute settings, ...).
    """
    class_name = _folder_format(path)
    if class_name == "WanTransformer3DModel":
        from .models.wan import WanModel, config_from_diffusers, load_diffusers_weights, read_diffusers_folder

        cfg, state = read_diffusers_folder(path)
        tp, cp = _world_sizes()
        config = config_from_diffusers(cfg, tensor_model_parallel_size=tp, context_parallel_size=cp,
                                       **config_overrides)
        return load_diffusers_weights(WanModel(config), state)
    # extension point: converted Megatron distributed checkpoints (issue 6) get their own branch here
    raise ValueError(f"{path} is not a diffusers WanTransformer3DModel folder (config.json _class_name is "
                     f"{class_name!r}); other checkpoint formats are not supported yet")
