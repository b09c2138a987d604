"""Sweep of launch configs for the attention forward+JVP kernel at one shape (bf16, CUDA).

Autotuning keeps only the winner of ``_CONFIGS``; this times every candidate config (the current
ones and others: more pipeline stages, other block and warp counts) on its own, next to the cuDNN
and flash forwards measured in the same run, and checks each config's outputs against the
autotuned kernel's. On sm_90 it also times the Gluon kernel for Hopper (``kernels/flash_jvp_hopper.py``)
in the pipeline shapes of ``--hopper-configs``; ``flash_attention_jvp`` itself calls that kernel there. A config that does not fit the GPU's shared memory or registers is listed
as such. Add a winner to ``_CONFIGS`` in ``kernels/flash_jvp.py`` only when it wins here.

    python tools/tune_flash_jvp.py [--shape 1,12,32760,32760,128] [--layout sbhd|bhsd] [--configs 128,64,8,3 ...]
                                   [--hopper-configs 64,64,3 ...]
    TRITON_INTERPRET=1 python tools/tune_flash_jvp.py --cpu-smoke
"""
import argparse
import math

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from megatron_rcm.kernels import flash_attention_jvp
from megatron_rcm.kernels import flash_jvp
from megatron_rcm.testing import norm_relative_error

# (BLOCK_M, BLOCK_N, num_warps, num_stages[, 1 = tensor descriptors (TMA)])
CANDIDATES = [
    (64, 64, 4, 3, 1), (128, 64, 8, 2, 1), (128, 32, 8, 3), (128, 64, 8, 2), (64, 32, 4, 2),  # what autotuning keeps at head dim 128
    (128, 32, 8, 3, 1), (128, 32, 8, 4, 1), (64, 32, 4, 2, 1), (64, 32, 4, 3, 1), (64, 64, 4, 2, 1),
    (128, 32, 8, 2), (128, 32, 8, 4), (64, 32, 4, 3), (128, 128, 8, 1),
]


def _parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="1,12,32760,32760,128", help="B,H,Sq,Sk,D")
    p.add_argument("--configs", nargs="+", help="BLOCK_M,BLOCK_N,warps,stages[,1 = tensor descriptors] (default: CANDIDATES)")
    p.add_argument("--layout", choices=("sbhd", "bhsd"), default="sbhd",
                   help="storage of the [B, H, S, D] inputs: sbhd = strided views of [S, B, H, D] tensors, as "
                        "the Wan model passes them; bhsd = contiguous")
    p.add_argument("--hopper-configs", nargs="*", default=["128,64,2", "64,64,3", "128,32,3"],
                   help="BLOCK_M,BLOCK_N,stages of the Gluon Hopper kernel (sm_90 only)")
    p.add_argument("--skip-autotuned", action="store_true",
                   help="do not run the autotuned kernel (it compiles and times all of _CONFIGS first); outputs "
                        "are compared with the first config's instead")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shape, one config, under TRITON_INTERPRET=1")
    return p.parse_args()


def _time_ms(fn, device):
    if device.type == "cpu":
        fn()
        return float("nan")
    return triton.testing.do_bench(fn, warmup=50, rep=300)


def _hopper_rows(inputs, configs, reference, compared_with, device):
    from megatron_rcm.kernels import flash_jvp_hopper

    flash_jvp._install_descriptor_allocator()
    rows = []
    for numbers in configs:
        config = flash_jvp_hopper.HopperConfig(*map(int, numbers.split(",")))
        run = lambda: flash_jvp_hopper.launch(*inputs, inputs[0].shape[-1] ** -0.5,  # noqa: E731
                                              flash_jvp._empty_outputs(*inputs[:2]), config)
        name = f"Hopper kernel (Gluon) {tuple(config)}"
        try:
            outputs = run()
        except Exception as e:  # shared memory or registers exceeded, say
            rows.append((name, None, 6, f"failed: {type(e).__name__}: {str(e)[:200]}"))
            continue
        note = "" if reference is None else (
            f"differs from {compared_with} by "
            f"{max(norm_relative_error(outputs[0], reference[0]), norm_relative_error(outputs[1], reference[1])):.1e}")
        rows.append((name, _time_ms(run, device), 6, note))
    return rows


def main():
    args = _parse()
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    batch, heads, seqlen_q, seqlen_k, head_dim = (1, 2, 96, 80, 32) if args.cpu_smoke else map(
        int, args.shape.split(","))
    configs = ([(32, 16, 4, 2), (32, 16, 4, 2, 1)] if args.cpu_smoke else
               [tuple(map(int, c.split(","))) for c in args.configs] if args.configs else CANDIDATES)
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = [torch.randn(batch, heads, s, head_dim, dtype=torch.bfloat16, device=device, generator=gen)
              for s in (seqlen_q, seqlen_k, seqlen_k, seqlen_q, seqlen_k, seqlen_k)]
    if args.layout == "sbhd":
        inputs = [t.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3) for t in inputs]
    gemm_flop = 2 * batch * heads * seqlen_q * seqlen_k * head_dim  # one of the six GEMMs
    reference = None if args.skip_autotuned else flash_attention_jvp(*inputs)
    compared_with = "flash_attention_jvp"

    rows = []
    if device.type == "cuda":
        for name, backend in (("cuDNN forward", SDPBackend.CUDNN_ATTENTION), ("flash forward", SDPBackend.FLASH_ATTENTION)):
            with sdpa_kernel(backend):
                rows.append((name, _time_ms(lambda: scaled_dot_product_attention(*inputs[:3]), device), 2, ""))
        if reference is not None:
            rows.append(("flash_attention_jvp (autotuned, or the Hopper kernel on sm_90)",
                         _time_ms(lambda: flash_attention_jvp(*inputs), device), 6, ""))
        if flash_jvp._hopper_kernel_serves(*inputs, None):
            rows += _hopper_rows(inputs, args.hopper_configs, reference, compared_with, device)
    cudnn_ms = rows[0][1] if rows else float("nan")
    kept = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages, c.kwargs["USE_TMA"])
            for c in flash_jvp._CONFIGS}
    scale = head_dim ** -0.5
    for numbers in configs:
        config = flash_jvp.launch_config(*numbers[:4], tma=bool(numbers[4]) if len(numbers) > 4 else False)
        name = f"config {tuple(numbers[:4])}" + (" TMA" if config.kwargs["USE_TMA"] else "")
        try:
            outputs = flash_jvp.launch(*inputs, scale, None, config)
        except triton.runtime.errors.OutOfResources as e:
            rows.append((name, None, 6, f"does not fit: {e}"))
            continue
        except Exception as e:  # one failing candidate (a TMA variant, say) must not end the sweep
            rows.append((name, None, 6, f"failed: {type(e).__name__}: {str(e)[:200]}"))
            continue
        if reference is None:
            reference, compared_with = outputs, name
        differs = max(norm_relative_error(outputs[0], reference[0]), norm_relative_error(outputs[1], reference[1]))
        in_configs = (*numbers[:4], config.kwargs["USE_TMA"]) in kept
        note = ("in _CONFIGS" if in_configs else "candidate") + f"; differs from {compared_with} by {differs:.1e}"
        rows.append((name, _time_ms(lambda: flash_jvp.launch(*inputs, scale, None, config), device), 6, note))

    print(f"attention forward+JVP launch configs, B{batch} H{heads} Sq{seqlen_q} Sk{seqlen_k} D{head_dim}, bf16, "
          f"{args.layout} storage, "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (interpreter)'}\n")
    print("| kernel | ms | TFLOP/s | x cuDNN forward | note |\n|---|---|---|---|---|")
    for name, ms, gemms, note in rows:
        if ms is None:
            print(f"| {name} | - | - | - | {note} |")
            continue
        tflops = gemms * gemm_flop / ms / 1e9 if math.isfinite(ms) else float("nan")
        print(f"| {name} | {ms:.2f} | {tflops:.0f} | {ms / cudnn_ms:.2f} | {note} |")


if __name__ == "__main__":
    main()
