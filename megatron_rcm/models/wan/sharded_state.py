"""The Wan model's tensors as a megatron-core sharded state dict that loads at any TP/CP/DP size.

Each tensor is keyed by its ``WanModel`` state-dict name under a prefix and described by its
place in the full (TP=1) tensor:
* column/row-parallel weights and biases: sharded along megatron's ``partition_dim``;
* the q/k RMSNorm weights (all heads, this rank's channels): sharded along dim 0;
* fused projections (``attn1.qkv`` = [q; k; v] of this rank's heads, ``attn2.kv`` = [k; v]):
  each rank's block is viewed as [parts, rows / TP, ...] and sharded along dim 1, so a TP=2
  checkpoint loads at TP=1 as [q0 q1; k0 k1; v0 v1]. Built with a ``ShardedTensorFactory``
  (as megatron's SwiGLU), which the optimizers' sharded state dicts follow;
* everything else is replicated over TP.
The same layout serves any tensors shaped like the parameters (EMA weights, optimizer state).
"""

import torch
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.utils import make_sharded_tensor_for_checkpoint, make_tp_sharded_tensor_for_checkpoint

FUSED_PARTS = {"attn1.qkv": 3, "attn2.kv": 2}
HEAD_NORMS = ("norm_q.weight", "norm_k.weight")


def _fused_parts(name):
    module = name.rsplit(".", 1)[0]
    return next((n for suffix, n in FUSED_PARTS.items() if module.endswith(suffix)), None)


def tp_axis(name, param):
    """The axis along which ``param`` is split over tensor-parallel ranks, or None if replicated."""
    if getattr(param, "tensor_model_parallel", False):
        return param.partition_dim
    if name.endswith(HEAD_NORMS):
        return 0
    return None


def _fused_factory(key, tensor, parts):
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank(with_context_parallel=True)
    shape = tensor.shape

    def build(key, t, replica_id, flattened_range):
        return ShardedTensor.from_rank_offsets(key, t.view(parts, shape[0] // parts, *shape[1:]),
                                               (1, tp_rank, tp_size), replica_id=replica_id)

    def merge(loaded):
        return loaded.reshape(shape)

    return ShardedTensorFactory(key, tensor, build, merge, replica_id=(0, 0, dp_rank))


def wan_sharded_state_dict(model, prefix="", tensors=None):
    """{prefix + name: sharded tensor} for the model's parameters, or for ``tensors`` (a dict
    name -> tensor shaped like the parameter of that name, e.g. EMA weights) in their layout."""
    params = dict(model.named_parameters())
    tensors = params if tensors is None else tensors
    if set(tensors) != set(params):
        raise KeyError(f"tensors differ from the model's parameters: {sorted(set(tensors) ^ set(params))}")
    out = {}
    for name, tensor in tensors.items():
        key = prefix + name
        parts = _fused_parts(name)
        if parts is not None:
            out[key] = _fused_factory(key, tensor, parts)
        elif (axis := tp_axis(name, params[name])) is not None:
            out[key] = make_tp_sharded_tensor_for_checkpoint(tensor, key, tp_axis=axis)
        else:
            out[key] = make_sharded_tensor_for_checkpoint(tensor, key)
    return out


def strip_prefix(state, prefix):
    """The entries of a loaded state dict under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@torch.no_grad()
def load_wan_state(model, loaded, prefix=""):
    """Copy the entries of a loaded sharded state dict under ``prefix`` into the model (strict)."""
    model.load_state_dict(strip_prefix(loaded, prefix), strict=True)
