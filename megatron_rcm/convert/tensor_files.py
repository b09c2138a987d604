"""Read and write checkpoint tensors one at a time, so memory is bounded by a tensor, not a model.

Readers: a safetensors file, a sharded safetensors folder (``*.safetensors.index.json``), or a
``.pt``/``.pth`` state dict (memory-mapped). The writer streams safetensors: the header is
computed from shapes and dtypes first, then each tensor's bytes are appended as it comes.
"""

import json
import math
import os
import pickle
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


class CheckpointFileError(ValueError):
    """A checkpoint file or folder that cannot be read as it is."""


def unreadable(path, error: OSError) -> CheckpointFileError:
    """The error to raise for a checkpoint file the OS does not let us read (missing, no permission)."""
    return CheckpointFileError(f"{path}: cannot be read ({error.strerror or error})")


def read_json(path):
    """The JSON object in the file ``path``; a ``CheckpointFileError`` naming it if it is not one."""
    try:
        value = json.loads(Path(path).read_text())
    except OSError as e:
        raise unreadable(path, e) from e
    except ValueError as e:  # malformed JSON, or bytes that are not text
        raise CheckpointFileError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise CheckpointFileError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


def load_torch_file(path, mmap=False):
    """``torch.load`` with ``weights_only=True``, errors as one-line ``CheckpointFileError``s: a
    file that needs more than tensors and plain containers to unpickle is refused, never run."""
    try:
        with warnings.catch_warnings():  # damaged bytes can read as an unknown pickle protocol: the error says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
        raise CheckpointFileError(f"{path}: not a readable torch state dict: it does not load with "
                                  f"weights_only=True ({lines[0]}); other pickles are refused, never run") from e
    except RuntimeError as e:
        if mmap and "mmap can only be used" in str(e):  # the pre-zip torch.save format
            return load_torch_file(path, mmap=False)
        raise CheckpointFileError(f"{path}: not a readable torch state dict ({str(e).splitlines()[0]})") from e
    except OSError as e:
        raise unreadable(path, e) from e
    except Exception as e:  # torch raises several types for damaged archives, some with a bare number as message
        raise CheckpointFileError(f"{path}: not a readable torch state dict (damaged, or not written by torch.save: "
                                  f"{type(e).__name__} {e})") from e


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class TensorReader:
    """Lazy access to the tensors of a checkpoint: ``keys()``, ``info(key)``, ``get(key)``."""

    def __init__(self, path):
        path = Path(path)
        self.path = path
        self._files = {}  # key -> safetensors file
        self._state = None  # a memory-mapped .pt state dict
        self._handles = {}  # safetensors file -> open handle
        if path.is_dir():
            indexes = sorted(path.glob("*.safetensors.index.json"))
            singles = sorted(path.glob("*.safetensors"))
            if indexes:
                self._index_shards(indexes[0])
            elif len(singles) == 1:
                self._index_file(singles[0])
            else:
                raise CheckpointFileError(
                    f"{path}: expected one .safetensors file or a *.safetensors.index.json, found {len(singles)} "
                    "safetensors files and no index"
                )
        elif path.suffix == ".safetensors":
            self._index_file(path)
        elif path.suffix in (".pt", ".pth"):
            self._state = _unwrap_state_dict(load_torch_file(path, mmap=True), path)
        elif not path.exists():
            raise CheckpointFileError(f"{path}: no such file or folder")
        else:
            raise CheckpointFileError(f"{path}: unsupported checkpoint type (expected .safetensors, .pt, .pth or a folder)")

    def _index_shards(self, index_file):
        weight_map = read_json(index_file).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointFileError(f"{index_file}: no weight_map object (tensor name -> safetensors file)")
        for key, name in weight_map.items():
            self._files[key] = self.path / name

    def _index_file(self, file):
        for key in self._open(file).keys():
            self._files[key] = file

    def _open(self, file):
        if file not in self._handles:
            if not file.exists():
                raise CheckpointFileError(f"{file}: missing (named by the index in {file.parent})")
            try:
                with open(file, "rb"):  # safetensors reports a file without read permission as missing
                    pass
            except OSError as e:
                raise unreadable(file, e) from e
            try:
                self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
            except Exception as e:
                raise CheckpointFileError(f"{file}: damaged or truncated safetensors file ({e})") from e
        return self._handles[file]

    def keys(self):
        return list(self._state.keys()) if self._state is not None else list(self._files)

    def info(self, key) -> TensorInfo:
        if self._state is not None:
            t = self._state[key]
            return TensorInfo(tuple(t.shape), t.dtype)
        sl = self._open(self._files[key]).get_slice(key)
        return TensorInfo(tuple(sl.get_shape()), _dtype_from_name(sl.get_dtype()))

    def get(self, key) -> torch.Tensor:
        if self._state is not None:
            return self._state[key]
        try:
            return self._open(self._files[key]).get_tensor(key)
        except Exception as e:
            raise CheckpointFileError(f"{self._files[key]}: cannot read tensor {key!r} ({e})") from e


def _dtype_from_name(name):
    for dtype, n in _DTYPE_NAMES.items():
        if n == name:
            return dtype
    raise CheckpointFileError(f"unsupported safetensors dtype {name}")


def _unwrap_state_dict(state, path):
    """The flat tensor dict inside a .pt export: plain, or under "state_dict"/"model"/"net"/"ema"."""
    while isinstance(state, dict) and not all(torch.is_tensor(v) for v in state.values()):
        nested = [k for k in ("state_dict", "model", "net", "ema") if isinstance(state.get(k), dict)]
        if not nested:
            raise CheckpointFileError(f"{path}: a dict without a flat tensor state dict (keys {sorted(state)[:8]})")
        state = state[nested[0]]
    if not isinstance(state, dict):
        raise CheckpointFileError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


class StreamingSafetensorsWriter:
    """Write a safetensors file tensor by tensor, in the order of ``infos``.

    Only the header and the tensor being written are in memory. ``write`` checks each tensor's
    name, shape and dtype against the announced ones.
    """

    def __init__(self, path, infos: dict, metadata=None):
        self.path = Path(path)
        self._order = list(infos)
        self._infos = infos
        header, offset = {}, 0
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        for key, info in infos.items():
            if info.dtype not in _DTYPE_NAMES:
                raise ValueError(f"{key}: dtype {info.dtype} cannot be stored in safetensors")
            header[key] = {"dtype": _DTYPE_NAMES[info.dtype], "shape": list(info.shape),
                           "data_offsets": [offset, offset + info.nbytes]}
            offset += info.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def write(self, key, tensor):
        if self._next >= len(self._order) or self._order[self._next] != key:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise ValueError(f"{self.path}: expected {expected} next, got {key}")
        info = self._infos[key]
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise ValueError(f"{key}: announced {info.shape} {info.dtype}, got {tuple(tensor.shape)} {tensor.dtype}")
        self._file.write(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        self._next += 1

    def close(self):
        if self._next != len(self._order):
            self._file.close()
            raise ValueError(f"{self.path}: {len(self._order) - self._next} tensors announced but not written")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def write_safetensors_shards(folder, stem, infos: dict, produce, max_shard_bytes=5 * 2**30, metadata=None):
    """Stream ``infos`` into ``stem.safetensors`` (or ``stem-0000i-of-0000n.safetensors`` + index).

    ``produce(key)`` returns the tensor for a key; it is called once per key, in order.
    """
    shards, current, size = [], {}, 0
    for key, info in infos.items():
        if current and size + info.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = info
        size += info.nbytes
    shards.append(current)
    names = ([f"{stem}.safetensors"] if len(shards) == 1 else
             [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    for name, shard in zip(names, shards):
        writer = StreamingSafetensorsWriter(Path(folder) / name, shard, metadata=metadata)
        for key in shard:
            writer.write(key, produce(key))
            weight_map[key] = name
        writer.close()
    if len(shards) > 1:
        total = sum(info.nbytes for info in infos.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (Path(folder) / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return names
