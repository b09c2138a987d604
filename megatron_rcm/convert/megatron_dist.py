"""A model of any family as a Megatron distributed checkpoint (megatron-core's ``torch_dist`` format), streamed.

The checkpoint is what ``dist_checkpointing.save(model.sharded_state_dict(prefix="model."))``
writes, so ``dist_checkpointing.load`` reads it at any TP/CP size: a torch.distributed.checkpoint
(DCP) folder (``__0_0.distcp`` + ``.metadata``) holding each parameter's *global* tensor
(the family's weight map, ``models.weight_map``), megatron's ``metadata.json``, and ``common.pt`` recording the model
config (``megatron_rcm.loading.checkpoint_models``), so that ``load_model(path)`` needs nothing else.

Memory: megatron-core's own save stages a rank's whole state dict in host memory. Here one
process drives DCP's ``FileSystemWriter`` with a planner whose write items are declared up front
(key, global shape, the chunk of each TP rank) and whose ``resolve_data`` builds each tensor only
when the writer asks for it, in order. Host memory holds one global tensor (plus its diffusers
parts and one chunk) at a time. Reading goes the other way: one global tensor per ``dcp.load``.
"""

import ctypes
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from megatron.core.dist_checkpointing.core import CheckpointingConfig, maybe_load_config, save_config
from megatron.core.dist_checkpointing.strategies.cached_metadata_filesystem_reader import (
    CachedMetadataFileSystemReader,
)
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType
from tqdm import tqdm

from ..atomic_output import atomic_output_dir, raised_while_interrupted
from ..loading import MODELS_KEY, checkpoint_models
from ..models import family_of_diffusers_config, family_of_model_class
from ..save_folder import latest_checkpoint_path
from .tensor_files import CheckpointFileError, TensorInfo, load_torch_file, unreadable
from .wan_native import ConfigMismatchError, DiffusersTensors, cast_to

MODEL_PREFIX = "model."
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


class _StreamingSavePlanner(dcp.DefaultSavePlanner):
    """A save plan given as write items; each item's tensor comes from ``produce(item)`` when written."""

    def __init__(self, items, produce):
        super().__init__(flatten_state_dict=False, dedup_save_to_lowest_rank=False)
        self._items, self._produce = items, produce

    def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=True):
        self.state_dict, self.is_coordinator = {}, is_coordinator

    def create_local_plan(self):
        self.plan = SavePlan(self._items)
        return self.plan

    def resolve_data(self, write_item):
        return self._produce(write_item)


def _return_freed_memory():
    """glibc keeps freed tensor buffers of up to 32 MB in its heap (its mmap threshold rises after large
    frees), so a stream of such tensors grows the process by hundreds of MB; hand them back."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _chunks(global_shape, tp_axis, tp_size):
    """(offsets, sizes) of the pieces TP ranks hold (one piece for a replicated tensor)."""
    if tp_axis is None:
        return [((0,) * len(global_shape), tuple(global_shape))]
    step = global_shape[tp_axis] // tp_size
    return [(tuple(r * step if a == tp_axis else 0 for a in range(len(global_shape))),
             tuple(step if a == tp_axis else s for a, s in enumerate(global_shape))) for r in range(tp_size)]


def _check_tp_size(config, tp_size):
    sizes = {"attention heads": config.num_attention_heads, "ffn_dim": config.ffn_hidden_size}
    bad = [f"{name} {n}" for name, n in sizes.items() if n % tp_size]
    if tp_size < 1 or bad:
        raise ConfigMismatchError(f"tensor-parallel size {tp_size} must be >= 1 and divide {', '.join(bad) or 'the model'}")


def write_megatron(tensors: DiffusersTensors, output_path, tensor_parallel_size=1, dtype=None, overwrite=False,
                   progress=True, desc=None):
    """A Megatron distributed checkpoint of ``tensors``, chunked as TP ranks of ``tensor_parallel_size`` hold it."""
    family = family_of_diffusers_config(tensors.config)
    config = family.config_from_diffusers(tensors.config, use_cpu_initialization=True)
    _check_tp_size(config, tensor_parallel_size)
    table = family.parameters(config)
    items, keys = [], {}
    for name, p in table.items():
        key = MODEL_PREFIX + name
        keys[key] = p
        stored = tensors.infos[p.sources[0]].dtype
        props = TensorProperties(dtype=dtype if dtype is not None and stored.is_floating_point else stored)
        for offsets, sizes in _chunks(p.global_shape, p.tp_axis, tensor_parallel_size):
            chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
            items.append(WriteItem(index=MetadataIndex(key, torch.Size(offsets)), type=WriteItemType.SHARD,
                                   tensor_data=TensorWriteData(chunk, props, torch.Size(p.global_shape))))
    current, handed_out, failures = {}, [], []  # the global tensor in memory {key: tensor}; the last chunk; errors
    with atomic_output_dir(output_path, overwrite=overwrite) as tmp, \
            tqdm(total=len(table), desc=desc or "-> megatron", disable=not progress, unit="tensor") as bar:

        def produce(item):
            # FileSystemWriter keeps a reference to every tensor it wrote until the file is done;
            # the previous chunk is on disk by now, so its bytes are released here
            for done in handed_out:
                done.untyped_storage().resize_(0)
            handed_out.clear()
            key = item.index.fqn
            if key not in current:
                current.clear()
                _return_freed_memory()
                p = keys[key]
                try:
                    current[key] = cast_to(p.to_global([tensors.get(k) for k in p.sources]), dtype)
                except BaseException as e:
                    failures.append(e)
                    raise
                bar.update()
            chunk = item.tensor_data.chunk
            piece = current[key]
            for axis, (start, size) in enumerate(zip(chunk.offsets, chunk.sizes)):
                piece = piece.narrow(axis, start, size)
            handed_out.append(piece.clone(memory_format=torch.contiguous_format))
            return handed_out[-1]

        writer = dcp.FileSystemWriter(tmp, single_file_per_rank=True, thread_count=1, sync_files=True)
        try:
            dcp.save({}, storage_writer=writer, planner=_StreamingSavePlanner(items, produce), no_dist=True)
        except CheckpointException as e:
            if failures:  # DCP wraps errors of the planner: raise the source's own (a bad file, an interrupt)
                raise failures[0] from None
            # Ctrl-C (or SIGTERM) landed inside DCP's own code, or torch.save's writer failed closing its
            # file as the interrupt unwound (re-raising that error here would lose the interrupt)
            if any(raised_while_interrupted(exc) for exc, _ in e.failures.values()):
                raise KeyboardInterrupt from None
            raise
        current.clear()
        torch.save(checkpoint_models({MODEL_PREFIX: config}), tmp / "common.pt")
        save_config(CheckpointingConfig(sharded_backend="torch_dist"), str(tmp))
    return config


def _reason(error):
    """The last line of an error: DCP's CheckpointException carries each rank's whole traceback."""
    return (str(error).strip().splitlines() or [type(error).__name__])[-1]


def _checkpointing_config(path):
    """megatron's ``metadata.json`` of the checkpoint folder ``path``, or None where there is none."""
    if path.is_file():
        raise CheckpointFileError(f"{path} is a file: a Megatron checkpoint is the folder holding metadata.json "
                                  f"({path.parent})")
    try:
        return maybe_load_config(str(path))
    except OSError as e:
        raise unreadable(path / "metadata.json", e) from e
    except (ValueError, TypeError) as e:  # malformed JSON, or fields megatron does not know
        raise CheckpointFileError(f"{path / 'metadata.json'} is not a valid megatron checkpoint config ({e})") from e


def _records(path):
    path = Path(path)
    if _checkpointing_config(path) is None:
        raise CheckpointFileError(f"{path}: not a Megatron distributed checkpoint (no metadata.json)")
    common = load_torch_file(path / "common.pt")
    records = common.get(MODELS_KEY) if isinstance(common, dict) else None
    if not records:
        raise CheckpointFileError(f"{path}: no model config recorded ({MODELS_KEY} in common.pt); "
                                  "it was not written by megatron_rcm")
    return records


def megatron_tensors(path, prefix=None) -> DiffusersTensors:
    """A Megatron distributed checkpoint under diffusers names, keys and shapes checked against its config.

    ``prefix`` picks one model of a checkpoint that records several (e.g. a training run's ``ema.``).
    A training save folder (``SAVE``, ``SAVE/ema_student``) stands for its latest checkpoint.
    """
    path = Path(latest_checkpoint_path(path))
    records = _records(path)
    if prefix is None:
        if len(records) != 1:
            raise CheckpointFileError(f"{path}: holds models {sorted(records)}; choose one with --megatron-prefix "
                                      "(prefix= in the API)")
        (prefix,) = records
    if prefix not in records:
        raise CheckpointFileError(f"{path}: no model with prefix {prefix!r} (recorded: {sorted(records)})")
    try:
        family = family_of_model_class(records[prefix].get("class"))
    except ValueError as e:
        raise CheckpointFileError(f"{path}: {e}") from None
    config = family.config_class.from_architecture(records[prefix]["config"], use_cpu_initialization=True)
    reader = CachedMetadataFileSystemReader(path)
    try:
        stored = {k: m for k, m in reader.read_metadata().state_dict_metadata.items()
                  if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    except Exception as e:
        raise CheckpointFileError(f"{path}: unreadable checkpoint metadata ({_reason(e)})") from e
    table = {prefix + name: p for name, p in family.parameters(config).items()}
    missing, unknown = sorted(table.keys() - stored.keys()), sorted(stored.keys() - table.keys())
    if missing or unknown:
        raise CheckpointFileError(f"{path}: missing keys {missing}; unexpected keys {unknown}")
    wrong = [f"{k}: {tuple(stored[k].size)} != {p.global_shape}" for k, p in table.items()
             if tuple(stored[k].size) != p.global_shape]
    if wrong:
        raise ConfigMismatchError(f"{path}: shapes disagree with the recorded config: {wrong}")
    owner = {source: key for key, p in table.items() for source in p.sources}
    infos = {source: TensorInfo(table[key].source_shape, stored[key].properties.dtype) for source, key in owner.items()}
    current = {}

    def get(source):
        key = owner[source]
        if key not in current:
            current.clear()
            target = {key: torch.empty(stored[key].size, dtype=stored[key].properties.dtype)}
            try:
                dcp.load(target, storage_reader=reader, no_dist=True)
            except (CheckpointException, Exception) as e:
                raise CheckpointFileError(f"{path}: cannot read {key} ({_reason(e)})") from e
            current[key] = table[key].from_global(target[key])
        return current[key][source]

    return DiffusersTensors(family.diffusers_config(config), infos, get)
