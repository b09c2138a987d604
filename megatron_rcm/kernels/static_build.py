"""The attention JVP kernel compiled ahead of time for a GPU architecture on any machine, GPU or not.

For each launch config that autotuning weighs, Triton compiles the kernel to PTX, and the ptxas
shipped with Triton reports registers, spills and warnings such as serialized wgmma. Autotuning
cannot see these figures, and no GPU time is needed to get them. The pointer and stride
arguments are marked divisible by 16, as Triton's JIT specialises them at the Wan shapes; without
that mark Triton does not pipeline the loads.

    python -m megatron_rcm.kernels.static_build [--arch 90] [--head-dim 128] [--dtype bf16] [--tma] [--constant-kv]
    python -m megatron_rcm.kernels.static_build --hopper-kernel [--head-dim 128] [--constant-kv]

It needs real compilation: run it without TRITON_INTERPRET=1.
"""
import argparse
import inspect
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .flash_jvp import _CONFIGS, _flash_jvp_kernel, fitting_configs, launch_config

_POINTERS = ("Q", "K", "V", "QT", "KT", "VT", "Out", "OutT", "Mask")
_FLOAT_POINTERS = ("Lse", "LseT", "Consts")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BuildReport:
    config: triton.Config
    registers: int
    spill_bytes: int  # stores + loads
    warnings: list
    shared_memory_bytes: int


def _ptxas(arch):
    """The ptxas Triton itself runs for this architecture (it ships more than one)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def build_report(config: triton.Config, head_dim=128, dtype="bf16", arch=90, kv_tangent=True) -> BuildReport:
    """The Triton kernel at one launch config."""
    if not isinstance(_flash_jvp_kernel, triton.runtime.JITFunction):
        raise RuntimeError("static builds need real compilation: unset TRITON_INTERPRET")
    constexprs = dict(HEAD_DIM=head_dim, HAS_MASK=False, PRECISION="tf32", UPCAST_BF16=False, KV_TANGENT=kv_tangent,
                      LONG_ROWS=False, **config.kwargs)
    kernel = _compile(ASTSource, _flash_jvp_kernel, constexprs, dtype, arch, config.num_warps, config.num_stages)
    return _ptxas_report(kernel, config, arch)


def hopper_build_report(config, head_dim=128, dtype="bf16", kv_tangent=True) -> BuildReport:
    """The Gluon kernel for Hopper (flash_jvp_hopper) at one pipeline shape, for sm_90a."""
    return _ptxas_report(hopper_kernel(config, head_dim, dtype, kv_tangent), config, 90)


def hopper_kernel(config, head_dim=128, dtype="bf16", kv_tangent=True, jit_function=None):
    """The compiled Gluon kernel (its ``asm`` holds the PTX and SASS) at one pipeline shape, for sm_90a;
    ``jit_function``: another version of ``flash_jvp_hopper._flash_jvp_hopper_kernel``."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from .flash_jvp_hopper import _flash_jvp_hopper_kernel

    constexprs = dict(HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n, STAGES=config.stages,
                      KV_TANGENT=kv_tangent, EARLY_RESCALE=config.early_rescale, PEEL_LAST=config.peel_last)
    return _compile(GluonASTSource, jit_function or _flash_jvp_hopper_kernel, constexprs, dtype, 90, config.num_warps,
                    None)


def _compile(source_class, jit_function, constexprs, dtype, arch, num_warps, num_stages):
    names = list(inspect.signature(jit_function.fn).parameters)
    signature = {n: "constexpr" if n in constexprs else f"*{dtype}" if n in _POINTERS
                 else "*fp32" if n in _FLOAT_POINTERS else "fp32" if n.endswith("_scale") else "i32" for n in names}
    source = source_class(
        fn=jit_function, signature=signature,
        constexprs={(names.index(n),): v for n, v in constexprs.items()},
        attrs={(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
               if signature[n].startswith("*") or n.startswith("stride")})
    options = dict(num_warps=num_warps) | ({} if num_stages is None else dict(num_stages=num_stages))
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def _ptxas_report(kernel, config, arch) -> BuildReport:
    with tempfile.TemporaryDirectory() as folder:
        ptx = os.path.join(folder, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        log = subprocess.run([_ptxas(arch), f"-arch=sm_{arch}a", "-v", ptx, "-o", os.path.join(folder, "kernel.cubin")],
                             capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    warnings = [line.split("warning :")[-1].strip() for line in log.splitlines() if "warning" in line]
    return BuildReport(config, registers, int(spills.group(1)) + int(spills.group(2)), warnings,
                       kernel.metadata.shared)


def tuned_configs(head_dim, dtype="bf16", tma=False):
    """The configs autotuning weighs at this head dim and dtype (after its pruning); with ``tma``
    also each one's tensor-descriptor variant."""
    configs = fitting_configs(_CONFIGS, head_dim, _TORCH_DTYPES[dtype].itemsize)
    if tma:
        tuned = {_numbers(c) for c in configs}
        configs = configs + [launch_config(*_numbers(c)[:4], True) for c in configs
                             if not c.kwargs["USE_TMA"] and (*_numbers(c)[:4], True) not in tuned]
    return configs


def _numbers(config):
    k = config.kwargs
    return k["BLOCK_M"], k["BLOCK_N"], config.num_warps, config.num_stages, k["USE_TMA"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100/H200)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(_TORCH_DTYPES), default="bf16")
    p.add_argument("--tma", action="store_true", help="also the tensor-descriptor variant of each config")
    p.add_argument("--constant-kv", action="store_true",
                   help="the specialisation for keys and values without a tangent (k_t = v_t = None)")
    p.add_argument("--hopper-kernel", action="store_true",
                   help="the Gluon kernel for Hopper (flash_jvp_hopper) at the candidate pipeline shapes that fit "
                        "shared memory instead (sm_90a)")
    args = p.parse_args()
    if args.hopper_kernel:
        return _hopper_table(args)
    print(f"attention JVP kernel for sm_{args.arch}a, head dim {args.head_dim}, {args.dtype}, "
          f"{'constant keys and values, ' if args.constant_kv else ''}Triton {triton.__version__}\n")
    print("| BLOCK_M | BLOCK_N | warps | stages | descriptors | registers | spill bytes | ptxas warnings |")
    print("|---|---|---|---|---|---|---|---|")
    for config in tuned_configs(args.head_dim, args.dtype, args.tma):
        r = build_report(config, args.head_dim, args.dtype, args.arch, kv_tangent=not args.constant_kv)
        k = config.kwargs
        print(f"| {k['BLOCK_M']} | {k['BLOCK_N']} | {config.num_warps} | {config.num_stages} | {k['USE_TMA']} | "
              f"{r.registers} | {r.spill_bytes} | {'; '.join(r.warnings) or '-'} |")


def _hopper_table(args):
    from .flash_jvp_hopper import CANDIDATES, CONFIGS, fits

    print(f"Gluon attention JVP kernel for sm_90a, head dim {args.head_dim}, {args.dtype}, "
          f"{'constant keys and values, ' if args.constant_kv else ''}Triton {triton.__version__}\n")
    print("| BLOCK_M | BLOCK_N | stages | early rescale | last block after the loop | in CONFIGS | registers "
          "| spill bytes | shared memory KiB | ptxas warnings |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for config in CANDIDATES:
        if not fits(config, args.head_dim, not args.constant_kv):
            continue
        r = hopper_build_report(config, args.head_dim, args.dtype, kv_tangent=not args.constant_kv)
        print(f"| {config.block_m} | {config.block_n} | {config.stages} | {config.early_rescale} | {config.peel_last} | "
              f"{config in CONFIGS.values()} | {r.registers} | {r.spill_bytes} | {r.shared_memory_bytes / 1024:.1f} | "
              f"{'; '.join(r.warnings) or '-'} |")


if __name__ == "__main__":
    main()
