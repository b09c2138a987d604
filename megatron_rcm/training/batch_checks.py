"""Checks of each batch before it is trained on. A batch with a NaN or inf is skipped on every rank
alike and counted; too many in a row stop the run with a clear error (the data is broken, not
unlucky). A latent or embedding of the wrong shape stops it at once, naming what was expected."""

import torch
import torch.distributed as dist

from ..data.latent_shards import ShardFormatError
from ..parallel import current_device


def check_shapes(latent, embed, in_channels, text_dim, patch_size):
    """``latent`` [B, C, T, H, W] and ``embed`` [B, L, D] as the student takes them."""
    ok = (latent.dim() == 5 and latent.shape[1] == in_channels and embed.dim() == 3 and embed.shape[2] == text_dim
          and all(s % p == 0 for s, p in zip(latent.shape[2:], patch_size)))
    if not ok:
        raise ShardFormatError(f"a batch has latents {tuple(latent.shape[1:])} and text embeddings "
                               f"{tuple(embed.shape[1:])}; the teacher takes latents [{in_channels}, T, H, W] with "
                               f"T, H, W multiples of {tuple(patch_size)} and embeddings [L, {text_dim}]")


class NonFiniteDataError(ValueError):
    """Too many consecutive batches held a NaN or inf."""


def all_finite(*tensors) -> bool:
    """No NaN or inf in any of ``tensors`` (the data loader's workers check each batch with it)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class NonFiniteBatches:
    """``skip(finite)`` is collective: true on every rank when any rank's batch is not finite."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0

    def skip(self, finite: bool) -> bool:
        if dist.is_initialized() and dist.get_world_size() > 1:  # one rank alone need not wait for its device
            bad = torch.tensor([0 if finite else 1], dtype=torch.int32, device=current_device())
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            finite = not bad.item()
        if finite:
            self.consecutive = 0
            return False
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteDataError(f"{self.consecutive} consecutive batches hold NaN or inf values: fix the "
                                     f"latent shards (or allow more with --max-skipped-batches)")
        return True
