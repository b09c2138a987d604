"""Resumable sharded checkpoints: megatron-core distributed checkpoints, written atomically into
a save folder laid out as ``megatron_rcm.save_folder`` describes.

Every rank writes into ``.iter_XXXXXXX.tmp``; only after all ranks finished does rank 0 rename
it, then replace the tracker file (write + ``os.replace``), then delete the oldest checkpoints
beyond ``keep_last``. A crash at any point leaves the previous checkpoint and a tracker that
names a complete checkpoint. Saving an iteration that is already saved (a signal right after a
save) first renames the old copy to ``.iter_XXXXXXX.old`` and deletes it only once the new one is
in place; a crash between the two renames leaves that copy, which the next manager of the folder
renames back. An old checkpoint is renamed to ``.iter_XXXXXXX.deleted`` before it is deleted, so
that a crash mid-delete leaves hidden debris (the next manager removes it), never a partial
checkpoint under a checkpoint's name.
"""

import os
import shutil
from pathlib import Path

import torch.distributed as dist
from megatron.core import dist_checkpointing

from ..save_folder import (TRACKER, CheckpointNotFoundError, checkpoint_name, complete_iterations, is_complete,
                           latest_iteration)


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _is_rank0():
    return not dist.is_initialized() or dist.get_rank() == 0


def _set_aside_name(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def _delete(checkpoint: Path):
    doomed = checkpoint.parent / f".{checkpoint.name}.deleted"
    os.rename(checkpoint, doomed)
    shutil.rmtree(doomed)


class CheckpointManager:
    def __init__(self, save_dir, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.save_dir = Path(save_dir)
        self.keep_last = keep_last
        if _is_rank0():
            self._restore_set_aside()
        _barrier()

    def save(self, iteration: int, sharded_state_dict: dict) -> Path:
        """Collective: every rank passes its sharded state dict (plain values are saved once, by rank 0)."""
        final = self.save_dir / checkpoint_name(iteration)
        tmp = self.save_dir / f".{checkpoint_name(iteration)}.tmp"
        if _is_rank0():
            self.save_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
            tmp.mkdir()
        _barrier()
        dist_checkpointing.save(sharded_state_dict, str(tmp))
        _barrier()
        if _is_rank0():
            set_aside = _set_aside_name(final)
            if final.exists():  # saving the same iteration again (e.g. a signal right after a save)
                shutil.rmtree(set_aside, ignore_errors=True)
                os.rename(final, set_aside)
            os.rename(tmp, final)
            tracker_tmp = self.save_dir / f".{TRACKER}.tmp"
            tracker_tmp.write_text(str(iteration))
            os.replace(tracker_tmp, self.save_dir / TRACKER)
            shutil.rmtree(set_aside, ignore_errors=True)
            for old in self.iterations()[:-self.keep_last]:
                _delete(self.save_dir / checkpoint_name(old))
        _barrier()
        return final

    def _restore_set_aside(self):
        """Put back a checkpoint a crashed save had set aside before its new copy was in place; drop
        one whose new copy is, and what a crashed deletion left."""
        if not self.save_dir.is_dir():
            return
        for doomed in self.save_dir.glob(".iter_*.deleted"):
            shutil.rmtree(doomed)
        for set_aside in self.save_dir.glob(".iter_*.old"):
            final = self.save_dir / set_aside.name[1:-len(".old")]
            if final.exists():
                shutil.rmtree(set_aside)
            else:
                os.rename(set_aside, final)

    def iterations(self):
        """Iterations of the complete checkpoints on disk, oldest first."""
        return complete_iterations(self.save_dir)

    def latest_iteration(self):
        """The tracker's iteration, or None when nothing was saved yet."""
        return latest_iteration(self.save_dir)

    def load(self, sharded_state_dict: dict, iteration=None) -> dict:
        """Collective: load into the layout of ``sharded_state_dict`` (this run's TP/CP/DP sizes)."""
        if iteration is None:
            iteration = self.latest_iteration()
            if iteration is None:
                raise CheckpointNotFoundError(f"no checkpoint in {self.save_dir} (no {TRACKER})")
        path = self.save_dir / checkpoint_name(iteration)
        if not is_complete(path):
            raise CheckpointNotFoundError(f"{path} is not a complete checkpoint")
        return dist_checkpointing.load(sharded_state_dict, str(path))

