"""Every ``WanModel`` parameter: its diffusers source tensor(s), its full (global) shape, its TP split.

This table is the one place that knows how diffusers' ``WanTransformer3DModel`` names map to this
model. From it follow the diffusers -> TP-rank slices (``load_diffusers_weights``), the full
tensors of a Megatron distributed checkpoint in both directions (``megatron_rcm.convert``), the
expected diffusers shapes of a config, and ``WanModel.sharded_state_dict``.

A parameter's *global* tensor is what a distributed checkpoint stores: the parameter of a TP=1
model, except that fused projections keep their parts on a leading axis (self-attention
``qkv``: ``[3, d, ...]`` = to_q, to_k, to_v; cross-attention ``kv``: ``[2, d, ...]``). Each TP rank
holds a contiguous piece of every part, so the stored layout is the same at every TP size.
"""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WanParameter:
    name: str  # WanModel parameter name
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


def wan_parameters(config) -> dict:
    """{parameter name: WanParameter} for every parameter of ``WanModel(config)``."""
    d, ffn = config.hidden_size, config.ffn_hidden_size
    patch = tuple(config.patch_size)
    out_features = config.out_channels * math.prod(patch)
    params = []

    def add(name, source, shape, tp_axis=None, global_shape=None):
        params.append(WanParameter(name, (source,), tuple(shape), tuple(global_shape or shape), tp_axis))

    def linear(name, source, in_features, out_features, split=None):
        """``split``: "column" (output features over TP), "row" (input features over TP), None."""
        add(f"{name}.weight", f"{source}.weight", (out_features, in_features), {"column": 0, "row": 1}.get(split))
        add(f"{name}.bias", f"{source}.bias", (out_features,), 0 if split == "column" else None)

    def fused(name, prefix, parts):
        for p, shape in (("weight", (d, d)), ("bias", (d,))):
            sources = tuple(f"{prefix}.to_{x}.{p}" for x in parts)
            params.append(WanParameter(f"{name}.{p}", sources, shape, (len(parts), *shape), tp_axis=1))

    add("patch_embedding.weight", "patch_embedding.weight", (d, config.in_channels, *patch),
        global_shape=(d, config.in_channels * math.prod(patch)))
    add("patch_embedding.bias", "patch_embedding.bias", (d,))
    for name, in_features, out_dim in (("time_embedder.linear_1", config.freq_dim, d),
                                       ("time_embedder.linear_2", d, d), ("time_proj", d, 6 * d),
                                       ("text_embedder.linear_1", config.text_dim, d),
                                       ("text_embedder.linear_2", d, d)):
        linear(f"condition_embedder.{name}", f"condition_embedder.{name}", in_features, out_dim)
    for i in range(config.num_layers):
        b = f"blocks.{i}."
        fused(b + "attn1.qkv", b + "attn1", "qkv")
        linear(b + "attn2.q", b + "attn2.to_q", d, d, "column")
        fused(b + "attn2.kv", b + "attn2", "kv")
        for attn in ("attn1", "attn2"):
            for norm in ("norm_q", "norm_k"):
                add(f"{b}{attn}.{norm}.weight", f"{b}{attn}.{norm}.weight", (d,), tp_axis=0)
            linear(f"{b}{attn}.proj", f"{b}{attn}.to_out.0", d, d, "row")
        linear(b + "ffn.fc1", b + "ffn.net.0.proj", d, ffn, "column")
        linear(b + "ffn.fc2", b + "ffn.net.2", ffn, d, "row")
        if config.cross_attn_norm:
            add(b + "norm2.weight", b + "norm2.weight", (d,))
            add(b + "norm2.bias", b + "norm2.bias", (d,))
        add(b + "scale_shift_table", b + "scale_shift_table", (1, 6, d))
    add("scale_shift_table", "scale_shift_table", (1, 2, d))
    linear("proj_out", "proj_out", d, out_features)
    return {p.name: p for p in params}


def diffusers_shapes(config) -> dict:
    """{diffusers key: shape} of every parameter of the diffusers model of ``config``."""
    return {key: p.source_shape for p in wan_parameters(config).values() for key in p.sources}


def sharded_state_dict(model, prefix="", sharded_offsets=(), metadata=None, tensors=None):
    """megatron-core ShardedTensors of ``model``'s parameters in the global layout above.

    ``tensors`` ({parameter name: tensor shaped like that parameter}, e.g. EMA weights) are laid
    out like the parameters instead of the parameters themselves. Fused projections go through a
    ShardedTensorFactory: the rank's ``[3*d/tp, ...]`` parameter is saved as its ``[3, d/tp, ...]``
    piece of the global ``[3, d, ...]`` tensor and merged back to the parameter's shape after loading.
    """
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
    from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group, make_sharded_tensors_for_checkpoint

    if sharded_offsets:
        raise ValueError("the Wan model has no pipeline stages: sharded_offsets must be empty")
    metadata = ensure_metadata_has_dp_cp_group(metadata)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    dp_rank = torch.distributed.get_rank(metadata["dp_cp_group"])
    table = wan_parameters(model.config)
    params = dict(model.named_parameters()) if tensors is None else tensors
    if params.keys() != table.keys():
        raise KeyError(f"the tensors and the weight map of this WanModel disagree: {sorted(params.keys() ^ table.keys())}")
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
                raise NotImplementedError("fused Wan projections do not support flattened (distributed-optimizer) "
                                          "sharded state")
            return ShardedTensor.from_rank_offsets(key, data.view(parts, -1, *data.shape[1:]),
                                                   (1, tp_rank, tp_size), replica_id=replica_id)

        def merge(loaded):
            return loaded.flatten(0, 1)

        out[prefix + name] = ShardedTensorFactory(prefix + name, param, build, merge, replica_id=(0, 0, dp_rank))
    return out
