"""The layout of a training save folder: written by ``training``, read by ``loading`` and ``convert``.

    SAVE/
        iter_0000100/                       a megatron-core distributed checkpoint (loads at any TP/CP/DP)
        iter_0000200/
        latest_checkpointed_iteration.txt   the iteration of the latest complete checkpoint
        ema_student/                        the EMA student alone, laid out the same way

A checkpoint folder is complete once it holds ``metadata.json``.
"""

import os
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"
EMA_EXPORT = "ema_student"


class CheckpointNotFoundError(FileNotFoundError):
    """No usable checkpoint where one was asked for."""


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def is_complete(checkpoint) -> bool:
    return (Path(checkpoint) / "metadata.json").exists()


def complete_iterations(save_dir):
    """Iterations of the complete checkpoints in ``save_dir``, oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.exists():
        return []
    return sorted(int(p.name[len("iter_"):]) for p in save_dir.iterdir()
                  if p.is_dir() and p.name.startswith("iter_") and is_complete(p))


def latest_iteration(save_dir):
    """The tracker's iteration, or None when nothing was saved yet; ``CheckpointNotFoundError`` if it
    names no complete checkpoint (or holds no number)."""
    tracker = Path(save_dir) / TRACKER
    if not tracker.exists():
        return None
    iteration = _tracked_iteration(tracker)
    if not is_complete(Path(save_dir) / checkpoint_name(iteration)):
        raise CheckpointNotFoundError(
            f"{tracker} names iteration {iteration}, but {checkpoint_name(iteration)} is missing or incomplete"
        )
    return iteration


def _tracked_iteration(tracker):
    try:
        return int(tracker.read_text().strip())
    except ValueError:  # not a number, or not text at all
        complete = complete_iterations(tracker.parent) or "none"
        raise CheckpointNotFoundError(f"{tracker} holds no iteration number; write in it the iteration of a complete "
                                      f"checkpoint (complete: {complete})") from None


def latest_checkpoint_path(path) -> str:
    """A save folder (``SAVE`` or ``SAVE/ema_student``) -> its latest complete checkpoint; any other
    path as it is."""
    if not os.path.isfile(os.path.join(path, TRACKER)):
        return str(path)
    return os.path.join(path, checkpoint_name(latest_iteration(path)))
