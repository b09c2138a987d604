"""Power EMA of the student weights, EDM2 style (docs/math.md section 5)."""

import math

import numpy as np
import torch
import torch.distributed as dist

# elements per all-gather when a sharded EMA is rebuilt whole (256 MiB of fp32)
GATHER_CHUNK = 1 << 26


def power_ema_gamma(relative_std: float) -> float:
    """The exponent gamma of the power EMA whose averaging profile has this relative std.

    gamma is the real root of gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0
    (eq. 5.1, EDM2's eq. 3 solved for gamma); s = 0.1 gives gamma ~ 6.94.
    """
    if not 0 < relative_std < 12 ** -0.5:
        raise ValueError(f"relative std must lie in (0, 12^-1/2), got {relative_std}")
    s2 = relative_std ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s2, 12.0 - s2])
    real = roots[np.abs(roots.imag) < 1e-9].real
    return float(real.max())


def power_ema_beta(k: int, gamma: float) -> float:
    """beta_k = (1 - 1/(k + 1))^(gamma + 1): the weight update k gives the previous average."""
    return (1 - 1 / (k + 1)) ** (gamma + 1)


class PowerEMA:
    """fp32 power EMA: after update k (k = 0, 1, ...) ema <- beta_k ema + (1 - beta_k) theta,
    beta_k = (1 - 1/(k + 1))^(gamma + 1), so the first update copies theta.
    Call update() on student iterations only; copy_to() writes the average into a model for export.
    """

    def __init__(self, model: torch.nn.Module, relative_std: float):
        self.gamma = power_ema_gamma(relative_std)
        self.num_updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    def beta(self, k: int) -> float:
        return power_ema_beta(k, self.gamma)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        beta = self.beta(self.num_updates)
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1 - beta)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name])


class ShardedPowerEMA:
    """``PowerEMA``'s updates, bit for bit, sharded the way megatron's distributed optimizer shards
    its states: the model's local parameters, flattened in order, are cut into equal slices, one
    per rank of ``group`` (the data+context-parallel group, whose ranks hold the same parameters);
    each rank keeps and updates only its slice.

    ``full_tensors()`` (collective) rebuilds every parameter's average in host memory for a
    checkpoint or the export, which therefore hold the whole EMA in the model's layout and load at
    any data-parallel size; ``load_full_tensors`` keeps this rank's slice of such tensors. With
    ``offload`` the slice lives in (pinned) host memory and visits the parameters' device for each
    update.
    """

    def __init__(self, model: torch.nn.Module, relative_std: float, group=None, offload: bool = False):
        self.gamma = power_ema_gamma(relative_std)
        self.num_updates = 0
        self.group, self.offload = group, offload
        params = list(model.named_parameters())
        self.shapes = {name: p.shape for name, p in params}
        self.device = params[0][1].device
        self.world = dist.get_world_size(group) if dist.is_initialized() else 1
        rank = dist.get_rank(group) if dist.is_initialized() else 0
        self.shard_numel = math.ceil(sum(p.numel() for _, p in params) / self.world)
        self.pieces = _slice_pieces(params, rank * self.shard_numel, self.shard_numel)
        storage = torch.device("cpu") if offload else self.device
        self.shard = torch.zeros(self.shard_numel, dtype=torch.float32, device=storage,
                                 pin_memory=offload and self.device.type == "cuda")
        self._apply(model, lambda average, value: average.copy_(value))

    def beta(self, k: int) -> float:
        return power_ema_beta(k, self.gamma)

    @torch.no_grad()
    def _apply(self, model, op):
        """op(slice piece, the same piece of the fp32 parameter) for each parameter piece of the slice."""
        shard = self.shard.to(self.device, non_blocking=True) if self.offload else self.shard
        params = dict(model.named_parameters())
        for name, param_start, shard_start, n in self.pieces:
            op(shard[shard_start:shard_start + n], params[name].detach().reshape(-1)[param_start:param_start + n].float())
        if self.offload:
            self.shard.copy_(shard)

    def update(self, model: torch.nn.Module) -> None:
        weight = 1 - self.beta(self.num_updates)
        self._apply(model, lambda average, value: average.lerp_(value, weight))
        self.num_updates += 1

    @torch.no_grad()
    def full_tensors(self) -> dict:
        """{parameter name: fp32 average}, whole, in host memory (collective over ``group``)."""
        flat = torch.empty(self.world * self.shard_numel, dtype=torch.float32)
        rows = flat.view(self.world, self.shard_numel)
        nccl = dist.is_initialized() and dist.get_backend(self.group) == "nccl"
        device = self.device if nccl else torch.device("cpu")
        for begin in range(0, self.shard_numel, GATHER_CHUNK):
            piece = self.shard[begin:begin + GATHER_CHUNK].to(device)
            gathered = torch.empty(self.world * piece.numel(), dtype=torch.float32, device=device)
            if self.world > 1:
                dist.all_gather_into_tensor(gathered, piece, group=self.group)
            else:
                gathered.copy_(piece)
            rows[:, begin:begin + piece.numel()].copy_(gathered.view(self.world, -1))
        out, start = {}, 0
        for name, shape in self.shapes.items():
            out[name] = flat[start:start + math.prod(shape)].view(shape)
            start += math.prod(shape)
        return out

    def empty_full_tensors(self) -> dict:
        """Host tensors shaped like ``full_tensors()``, for a checkpoint to be loaded into."""
        return {name: torch.empty(shape, dtype=torch.float32) for name, shape in self.shapes.items()}

    @torch.no_grad()
    def load_full_tensors(self, tensors: dict) -> None:
        """Keep this rank's slice of whole averages (e.g. a checkpoint's, saved at any DP size)."""
        if tensors.keys() != self.shapes.keys():
            raise KeyError(f"the EMA tensors and the model disagree: {sorted(tensors.keys() ^ self.shapes.keys())}")
        for name, param_start, shard_start, n in self.pieces:
            self.shard[shard_start:shard_start + n].copy_(tensors[name].reshape(-1)[param_start:param_start + n])


def _slice_pieces(params, start, length):
    """(name, start in the flattened parameter, start in the slice, length) of every parameter
    piece that falls into elements [start, start + length) of the parameters flattened in order."""
    pieces, offset = [], 0
    for name, p in params:
        lo, hi = max(offset, start), min(offset + p.numel(), start + length)
        if lo < hi:
            pieces.append((name, lo - offset, lo - start, hi - lo))
        offset += p.numel()
    return pieces
