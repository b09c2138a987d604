"""Write one latent shard (the format ``latent_shards`` reads) atomically and reproducibly."""

import io
import os
import tempfile
from pathlib import Path

import torch
import webdataset as wds

from ..atomic_output import new_file_mode


def _tensor_bytes(t):
    buffer = io.BytesIO()
    torch.save(t.detach().cpu().clone(), buffer)  # clone: a view would save its whole storage
    return buffer.getvalue()


def write_shard(path, samples) -> int:
    """Write (key, latent [C,T,H,W], embed [L,D], prompt) samples to the tar ``path``; returns the count.

    The tar is written beside ``path`` and renamed onto it when complete, so ``path`` either does
    not exist or holds every sample. Member times are fixed (0): the same samples give the same bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "wb") as f:
            with wds.TarWriter(f, mtime=0) as sink:  # closed before the file, also when a sample fails
                for key, latent, embed, prompt in samples:
                    sink.write({"__key__": key, "latent.pt": _tensor_bytes(latent),
                                "embed.pt": _tensor_bytes(embed), "prompt.txt": prompt.encode()})
                    count += 1
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return count
