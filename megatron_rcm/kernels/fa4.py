"""FlashAttention-4 (the ``flash-attn-4`` package's CuTe-DSL kernels) for plain attention on Hopper.

Optional, like Transformer Engine and Apex: when the package imports, ``kernels.attention`` sends the
plain calls it can serve here instead of to SDPA (cuDNN on Hopper): forward and backward, 16-bit,
head dim 64 or 128, no key mask, at least ``MIN_KEYS`` keys, on an sm_90 GPU. At the Wan
self-attention shape it is faster than cuDNN forward and backward, with the same errors against
float64 (docs/benchmarks.md). Text keys stay on cuDNN, whose forward is faster there.
``MEGATRON_RCM_FA4=0`` turns it off.

The two kernels are registered as torch ops (``torch.ops.megatron_rcm.fa4_forward``, ``fa4_backward``)
so that the dispatcher sees them: selective recompute keeps the forward's outputs
(``models.dit._ATTENTION_OPS``), and torch.compile traces through them. The package's own
``flash_attn_func`` is an autograd.Function whose kernels the dispatcher never sees. The backward
calls the package's ``_flash_attn_bwd`` as that function does; ``PINNED_VERSION`` is the version
whose private interface this module was written and checked against.
"""
import functools
import getpass
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch

PINNED_VERSION = "4.0.0b36"
# Shorter keys (text) stay on cuDNN: at 512 and 226 keys its forward is 1.17-1.33x faster than this one's
MIN_KEYS = 1024
SERVED_HEAD_DIMS = (64, 128)
SERVED_DTYPES = (torch.bfloat16, torch.float16)
ENV = "MEGATRON_RCM_FA4"
CACHE_ENV = "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"
# the child process of warm_up, until the first op waits for it (so that no kernel compiles twice)
_warm_up_process: Optional[subprocess.Popen] = None
_WARM_UP_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _pinned_version_installed() -> bool:
    """Whether flash-attn-4 is installed at ``PINNED_VERSION`` (another version says so, once)."""
    try:
        installed = importlib.metadata.version("flash-attn-4")
    except importlib.metadata.PackageNotFoundError:
        return False
    if installed != PINNED_VERSION:
        warnings.warn(f"flash-attn-4 {installed} is installed, but megatron_rcm calls the interface of "
                      f"{PINNED_VERSION} only: attention runs on SDPA (pip install flash-attn-4=={PINNED_VERSION})")
        return False
    return True


@functools.lru_cache(maxsize=1)
def _interface():
    """The package's interface module; None where ``_pinned_version_installed`` is not, or where it
    does not import (which says why, once)."""
    if not _pinned_version_installed():
        return None
    _disk_cache_on()  # read once, at the package's import
    try:
        from flash_attn.cute import interface
    except Exception as error:  # noqa: BLE001 - a broken install falls back, and says why
        warnings.warn(f"flash-attn-4 does not import ({type(error).__name__}: {error}): attention runs on SDPA "
                      f"(set {ENV}=0 to skip it)")
        return None
    return interface


def _disk_cache_on() -> bool:
    """Turns the package's disk cache on unless the user turned it off: its compiled kernels persist,
    keyed by the package's sources and versions, so a second run does not compile them again."""
    return os.environ.setdefault(CACHE_ENV, "1") == "1"


def enabled_by_environment() -> bool:
    """``MEGATRON_RCM_FA4``: unset or 1 (use the package where it serves), 0 (never); a ValueError
    otherwise, so that ``off`` or ``false`` does not silently leave it on."""
    value = os.environ.get(ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{ENV} must be 0 (plain attention on SDPA) or 1 (FlashAttention-4 where it serves), "
                         f"got {value!r}")
    return value == "1"


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the package imports and ``MEGATRON_RCM_FA4`` does not turn it off (under torch.compile,
    as it was when the graph was traced: dynamo cannot trace the package lookup)."""
    return enabled_by_environment() and _interface() is not None


def serves(q: torch.Tensor, k: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> bool:
    """Whether a plain call with these [B, H, S, D] inputs runs here. Not under
    ``torch.use_deterministic_algorithms`` (``--deterministic-mode``): the package's backward adds into
    dq with atomics, and its kernels bypass torch's check, so SDPA (which honours it) runs instead."""
    return (key_padding_mask is None and q.is_cuda and q.dtype in SERVED_DTYPES
            and q.shape[-1] in SERVED_HEAD_DIMS and k.shape[-2] >= MIN_KEYS
            and not torch.are_deterministic_algorithms_enabled()
            and torch.cuda.get_device_capability(q.device)[0] == 9 and available())


def warm_up(dtype: torch.dtype, head_dim: int, device: torch.device) -> Optional[subprocess.Popen]:
    """Prepare the package for attention of ``dtype`` and ``head_dim`` on ``device`` while a trainer
    loads its models: import it on a thread, and unless the stamp (``_stamp``) says its disk cache
    already holds them, compile its forward and backward into that cache in a child process, which is
    returned. None where attention of that kind would not run here, the disk cache is turned off, or
    no child is needed.

    Both take seconds that the first iteration would otherwise spend (docs/benchmarks.md). The import
    is mostly Python work, and so is the compile, which holds the GIL far longer: on a thread of the
    trainer it slowed the models' loading by more than it saved, so it runs in a child, on another
    core, and the first attention call waits for the child, then loads the kernels from disk. The
    package compiles one kernel per configuration, not per shape: a call at ``MIN_KEYS`` tokens
    compiles what the model's calls use. Where the stamp is there and the entries are not, the first
    call compiles them, as without a warm-up."""
    global _warm_up_process
    if not (device.type == "cuda" and dtype in SERVED_DTYPES and head_dim in SERVED_HEAD_DIMS
            and not torch.are_deterministic_algorithms_enabled()
            and torch.cuda.get_device_capability(device)[0] == 9 and enabled_by_environment()
            and _disk_cache_on() and _pinned_version_installed()):
        return None
    threading.Thread(target=_interface, name="flash-attn-4 import", daemon=True).start()
    if _stamp(dtype, head_dim, device).exists():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    code = f"import torch; from megatron_rcm.kernels import fa4; fa4._compile_once({dtype}, {head_dim}, {index})"
    root = str(Path(__file__).resolve().parents[2])  # where this megatron_rcm is, however it was found
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    log = tempfile.TemporaryFile()
    _warm_up_process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=log)
    _warm_up_process.log = log
    return _warm_up_process


def _stamp(dtype, head_dim, device) -> Path:
    """The file that says the package's disk cache holds this configuration's kernels. Its name has
    what the package's own cache keys depend on and can be read without importing it (that import is
    the cost spared); where they change, the stamp is missing and a child compiles again."""
    root = os.environ.get("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR") or (
        Path(tempfile.gettempdir()) / getpass.getuser() / "flash_attention_cute_dsl_cache")  # the package's default
    try:
        cutlass = importlib.metadata.version("nvidia-cutlass-dsl")
    except importlib.metadata.PackageNotFoundError:  # then the package will not import, and says so
        cutlass = "missing"
    versions = [PINNED_VERSION, cutlass, torch.__version__]
    major, minor = torch.cuda.get_device_capability(device)
    name = f"megatron_rcm_warm_up_{'_'.join(versions)}_{dtype}_{head_dim}_sm{major}{minor}"
    return Path(root) / name.replace("+", "_")


def _compile_once(dtype, head_dim, index):
    if _interface() is None:
        raise SystemExit("flash-attn-4 does not import")
    with torch.cuda.device(index):
        q, k, v, d_out = torch.randn(4, 1, MIN_KEYS, 1, head_dim, device="cuda", dtype=dtype).unbind(0)
        out, lse = _run_forward(q, k, v, head_dim ** -0.5)
        _run_backward(d_out, q, k, v, out, lse, head_dim ** -0.5)
        torch.cuda.synchronize()
    _stamp(dtype, head_dim, torch.device("cuda", index)).touch()


def _wait_for_warm_up():
    global _warm_up_process
    with _WARM_UP_LOCK:  # the backward may first run on autograd's thread
        process, _warm_up_process = _warm_up_process, None
        if process is None or process.wait() == 0:
            return
        process.log.seek(0)
        last = (process.log.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        warnings.warn(f"FlashAttention-4's warm-up process failed (exit {process.returncode}: {last}): "
                      "its kernels compile at their first use")


def _run_forward(q, k, v, scale):
    out, lse, *_ = _interface()._flash_attn_fwd(q, k, v, softmax_scale=scale, return_lse=True,
                                                out=torch.empty_like(q))
    return out, lse


def _run_backward(d_out, q, k, v, out, lse, scale):
    return _interface()._flash_attn_bwd(q, k, v, out, d_out, lse, scale, False, 0.0)


@torch.library.custom_op("megatron_rcm::fa4_forward", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """[B, S, H, D] inputs -> (out [B, S, H, D] in q's memory order, lse [B, H, S] float32, natural log).

    The models' q is a view of [S, B, H, D] storage: an output in that order reaches the output
    projection as a dense [S, B, H * D] matrix. In the package's own [B, S, H, D] order it would not,
    and with B > 1 (the guided teacher) cuBLAS multiplied it as S products of B rows (16 ms a call)."""
    _wait_for_warm_up()
    return _run_forward(q, k, v, scale)


@_forward.register_fake
def _(q, k, v, scale):
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


@torch.library.custom_op("megatron_rcm::fa4_backward", mutates_args=())
def _backward(d_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
              lse: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _wait_for_warm_up()
    dq, dk, dv = _run_backward(d_out, q, k, v, out, lse, scale)
    return dq, dk, dv


@_backward.register_fake
def _(d_out, q, k, v, out, lse, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _grads(ctx, d_out, _d_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _backward(d_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_forward.register_autograd(_grads, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: Optional[float]) -> torch.Tensor:
    """softmax(scale q k^T) v of [B, H, S, D] tensors (strided views welcome: only the head dim must be
    contiguous), in q's memory order."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out, _lse = _forward(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale)
    return out.transpose(1, 2)
