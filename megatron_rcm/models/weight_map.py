"""A family's weight map and what follows from it: diffusers <-> TP-rank slices, distributed-checkpoint state.

Each family lists every parameter of its model as a ``ParameterSpec``: its diffusers source
tensor(s), its full (global) shape and its TP split (``model.parameter_table()``). A parameter's
*global* tensor is what a distributed checkpoint stores: the parameter of a TP=1 model, except
that fused projections keep their parts on a leading axis (``[3, d, ...]`` = to_q, to_k, to_v).
Each TP rank holds a contiguous piece of every part, so the stored layout is the same at every
TP size.
"""

import glob
import json
import os
from dataclasses import dataclass

import torch
from megatron.core import parallel_state


@dataclass(frozen=True)
class ParameterSpec:
    name: str  # model parameter name
    sources: tuple  # diffusers keys; several for a fused projection (stacked on axis 0)
    source_shape: tuple  # shape of each diffusers tensor
    global_shape: tuple
    tp_axis: object = None  # axis of the global tensor split over TP ranks; None: replicated

    @property
    def fused(self):
        return len(self.sources) > 1

    def to_global(self, tensors):
        """The global tensor from the diffusers tensors (in ``sources`` order)."""
        return (torch.stack(tensors) if self.fused else tensors[0]).reshape(self.global_shape)

    def from_global(self, tensor):
        """{diffusers key: tensor} from the global tensor (views, no copy)."""
        parts = tensor.unbind(0) if self.fused else (tensor,)
        return {key: part.reshape(self.source_shape) for key, part in zip(self.sources, parts)}

    def tp_slice(self, tensor, tp_size, tp_rank):
        """This TP rank's parameter from the global tensor."""
        if self.tp_axis is None:
            return tensor
        piece = tensor.chunk(tp_size, dim=self.tp_axis)[tp_rank]
        return piece.flatten(0, 1) if self.fused else piece


def refuse_unsupported(cfg: dict, supported: dict, what: str):
    """Raise if the diffusers config ``cfg`` sets a key of ``supported`` to another value than the one ``what`` has."""
    for key, value in supported.items():
        if cfg.get(key, value) != value:
            raise ValueError(f"diffusers config has {key}={cfg[key]!r}; only {what} ({key}={value!r}) is supported")


def source_shapes(table) -> dict:
    """{diffusers key: shape} of every parameter of a weight map."""
    return {key: p.source_shape for p in table.values() for key in p.sources}


def _tp_rank():
    return parallel_state.get_tensor_model_parallel_rank() if parallel_state.model_parallel_is_initialized() else 0


def convert_state_dict(state, table, tp_size, tp_rank, family) -> dict:
    """This TP rank's model state dict from a diffusers state dict; lists missing/unknown/mis-shaped keys."""
    expected = set(source_shapes(table))
    missing, unknown = sorted(expected - state.keys()), sorted(state.keys() - expected)
    problems = []
    if missing:
        problems.append(f"missing from the diffusers weights: {missing}")
    if unknown:
        problems.append(f"unknown diffusers weights ({family} has none of these): {unknown}")
    if problems:
        raise KeyError("; ".join(problems))
    wrong = [f"{k}: {tuple(state[k].shape)} != {p.source_shape}" for p in table.values() for k in p.sources
             if tuple(state[k].shape) != p.source_shape]
    if wrong:
        raise ValueError(f"diffusers weights disagree with the config's shapes: {wrong}")
    return {name: p.tp_slice(p.to_global([state[k] for k in p.sources]), tp_size, tp_rank)
            for name, p in table.items()}


def read_diffusers_folder(path):
    """(config dict, state dict) of a diffusers transformer folder (or a pipeline folder's transformer/)."""
    if os.path.isfile(os.path.join(path, "transformer", "config.json")):
        path = os.path.join(path, "transformer")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    from safetensors.torch import load_file

    state = {}
    for file in files:
        state.update(load_file(file))
    return cfg, state


def load_diffusers_weights(model, source):
    """Copy diffusers weights into ``model`` (this rank's TP slice).

    ``source``: the diffusers transformer, its state dict, or a diffusers folder.
    """
    if isinstance(source, (str, os.PathLike)):
        _, state = read_diffusers_folder(source)
    elif isinstance(source, torch.nn.Module):
        state = source.state_dict()
    else:
        state = source
    c = model.config
    converted = convert_state_dict(state, model.parameter_table(), c.tensor_model_parallel_size, _tp_rank(), c.FAMILY)
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise KeyError(f"model keys without a diffusers weight: {result.missing_keys}; "
                       f"converted keys the model lacks: {result.unexpected_keys}")
    return model


def diffusers_state_dict(model) -> dict:
    """The diffusers tensors of a TP=1 model (the inverse of loading)."""
    if parallel_state.model_parallel_is_initialized() and parallel_state.get_tensor_model_parallel_world_size() > 1:
        raise ValueError("diffusers_state_dict needs a TP=1 model; export a TP>1 model through a distributed "
                         "checkpoint and tools/convert_checkpoint.py --from megatron --to diffusers")
    table = model.parameter_table()
    state = {}
    for name, param in model.named_parameters():
        spec = table[name]
        state.update(spec.from_global(param.detach().reshape(spec.global_shape)))
    return {key: t.contiguous().clone() for key, t in state.items()}


def save_diffusers_folder(model, folder, diffusers_config: dict, overwrite=True):
    """Write a TP=1 model as a diffusers folder (config.json + safetensors), atomically."""
    from safetensors.torch import save_file

    from ..atomic_output import atomic_output_dir

    with atomic_output_dir(folder, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(diffusers_config, indent=2) + "\n")
        save_file(diffusers_state_dict(model), str(tmp / "diffusion_pytorch_model.safetensors"))


def sharded_state_dict(model, prefix="", sharded_offsets=(), metadata=None, tensors=None):
    """megatron-core ShardedTensors of ``model``'s parameters in the global layout above.

    ``tensors`` ({parameter name: tensor shaped like that parameter}, e.g. EMA weights) are laid
    out like the parameters instead of the parameters themselves. Fused projections go through a
    ShardedTensorFactory: the rank's ``[3*d/tp, ...]`` parameter is saved as its ``[3, d/tp, ...]``
    piece of the global ``[3, d, ...]`` tensor and merged back to the parameter's shape after loading.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
    from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group, make_sharded_tensors_for_checkpoint

    family = model.config.FAMILY
    if sharded_offsets:
        raise ValueError(f"the {family} model has no pipeline stages: sharded_offsets must be empty")
    metadata = ensure_metadata_has_dp_cp_group(metadata)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    dp_rank = torch.distributed.get_rank(metadata["dp_cp_group"])
    table = model.parameter_table()
    params = dict(model.named_parameters()) if tensors is None else tensors
    if params.keys() != table.keys():
        raise KeyError(f"the tensors and the weight map of this {family} model disagree: "
                       f"{sorted(params.keys() ^ table.keys())}")
    plain = {n: p for n, p in params.items() if not table[n].fused}
    axes = {n: table[n].tp_axis for n in plain if table[n].tp_axis is not None}
    out = make_sharded_tensors_for_checkpoint(plain, prefix, axes, dp_cp_group=metadata["dp_cp_group"],
                                              tp_group=parallel_state.get_tensor_model_parallel_group())
    for name, param in params.items():
        spec = table[name]
        if not spec.fused:
            continue
        parts = spec.global_shape[0]

        def build(key, data, replica_id, flattened_range, parts=parts):
            if flattened_range is not None:
                raise NotImplementedError(f"fused {family} projections do not support flattened "
                                          "(distributed-optimizer) sharded state")
            return ShardedTensor.from_rank_offsets(key, data.view(parts, -1, *data.shape[1:]),
                                                   (1, tp_rank, tp_size), replica_id=replica_id)

        def merge(loaded):
            return loaded.flatten(0, 1)

        out[prefix + name] = ShardedTensorFactory(prefix + name, param, build, merge, replica_id=(0, 0, dp_rank))
    return out
