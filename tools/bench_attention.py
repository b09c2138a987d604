"""Benchmark of the attention forward + JVP kernels against SDPA (bf16).

On CUDA, per shape, in one run: flash_attention_jvp's forward+JVP as dispatched (what the models
get: on sm_90 the Gluon Hopper kernel, or for short keys the Triton kernel at a pinned config; see
flash_jvp.route); where the Hopper kernel can serve the call, also the Hopper kernel at its CONFIGS
entry and the autotuned Triton kernel, each on its own; SDPA flash and cuDNN forwards, and
torch.func.jvp through math SDPA (S <= 8192 only). As ms, TFLOP/s (forward+JVP counts 3 forwards'
FLOPs, 2 with constant keys and values), peak memory and the ratios to the flash and cuDNN forwards,
plus the dispatched call's first-call compile + autotune time and its bf16 out_t error against a
float64 reference on a slice of query rows. Cross-attention shapes are also timed with constant keys
and values (no k_t, v_t), as the models call them. Issue 23's kernel table is
``--shapes wan1.3b,cross,cross_odd``.

    python tools/bench_attention.py [--shapes wan1.3b,cross,cross_odd] [--quick] [--json PATH]
    TRITON_INTERPRET=1 python tools/bench_attention.py --cpu-smoke
"""
import argparse
import functools
import json
import math
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from bench_flags import names_of, output_file  # tools/ is this script's directory
from megatron_rcm import cli
from megatron_rcm.kernels import flash_attention_jvp
from megatron_rcm.kernels.flash_jvp import _hopper_kernel_serves, launch, launch_hopper
from megatron_rcm.kernels.reference import attention_reference

# name: (B, H, Sq, Sk, D)
SHAPES = {
    "wan1.3b": (1, 12, 32760, 32760, 128),
    "wan14b": (1, 40, 32760, 32760, 128),
    "h6": (1, 6, 32760, 32760, 128),
    "s8192": (1, 12, 8192, 8192, 128),
    "cross": (1, 12, 32760, 512, 128),
    "cross_odd": (2, 12, 20001, 226, 128),  # ragged: neither length a multiple of a block
    "ring": (1, 12, 8190, 8190, 128),
}
# where the models' keys and values carry no tangent (text keys in cross-attention): also timed
# with k_t = v_t = None, four of the six GEMMs
CONSTANT_KV_SHAPES = {"cross", "cross_odd"}
MATH_JVP_MAX_SEQ = 8192
ACCURACY_ROWS = 128


def make_inputs(batch, heads, seqlen_q, seqlen_k, head_dim, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(seqlen):
        return torch.randn(batch, heads, seqlen, head_dim, dtype=dtype, device=device, generator=gen)

    return rnd(seqlen_q), rnd(seqlen_k), rnd(seqlen_k), rnd(seqlen_q), rnd(seqlen_k), rnd(seqlen_k)


def out_t_error(inputs, out_t, rows):
    """Relative Frobenius error of out_t[..., rows, :] against the float64 reference."""
    q, k, v, q_t, k_t, v_t = (t.double() for t in inputs)
    _, (ref_t, _) = torch.func.jvp(attention_reference, (q[:, :, rows], k, v), (q_t[:, :, rows], k_t, v_t))
    return ((out_t[:, :, rows].double() - ref_t).norm() / ref_t.norm()).item()


def measure(fn, rep_ms):
    """(median ms, peak bytes above what was allocated before), or None on OOM."""
    import triton.testing

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        ms = triton.testing.do_bench(fn, warmup=10, rep=rep_ms)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    return ms, peak


def bench_shape(name, quick):
    batch, heads, seqlen_q, seqlen_k, head_dim = SHAPES[name]
    inputs = make_inputs(batch, heads, seqlen_q, seqlen_k, head_dim, torch.bfloat16, "cuda")
    q, k, v, q_t, k_t, v_t = inputs
    fwd_flops = 4 * batch * heads * seqlen_q * seqlen_k * head_dim

    start = time.perf_counter()
    result = flash_attention_jvp(*inputs)
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    rows = torch.cat([torch.arange(ACCURACY_ROWS), torch.arange(seqlen_q - ACCURACY_ROWS, seqlen_q)])
    error = out_t_error(inputs, result.out_t, rows.cuda())
    del result

    def math_jvp():
        with sdpa_kernel(SDPBackend.MATH):
            return torch.func.jvp(scaled_dot_product_attention, (q, k, v), (q_t, k_t, v_t))

    def sdpa_with(backend):
        def run():
            with sdpa_kernel(backend):
                return scaled_dot_product_attention(q, k, v)
        return run

    scale = head_dim ** -0.5
    kernels = {"flash_attention_jvp (dispatched)": functools.partial(flash_attention_jvp, softmax_scale=scale)}
    if _hopper_kernel_serves(*inputs, None):  # else the dispatched call is the autotuned Triton kernel
        kernels["hopper (gluon) fwd+jvp"] = lambda *tensors: launch_hopper(*tensors, scale)
        kernels["triton fwd+jvp (autotuned)"] = lambda *tensors: launch(*tensors, scale, None, None)
    calls = {"": (inputs, 3 * fwd_flops)}
    if name in CONSTANT_KV_SHAPES:
        calls[", constant k/v"] = ((q, k, v, q_t, None, None), 2 * fwd_flops)
    candidates = {label + variant: (functools.partial(kernel, *tensors), flops)
                  for label, kernel in kernels.items() for variant, (tensors, flops) in calls.items()}
    candidates["sdpa flash fwd"] = (sdpa_with(SDPBackend.FLASH_ATTENTION), fwd_flops)
    candidates["sdpa cudnn fwd"] = (sdpa_with(SDPBackend.CUDNN_ATTENTION), fwd_flops)
    if max(seqlen_q, seqlen_k) <= MATH_JVP_MAX_SEQ and not quick:
        candidates["math sdpa func.jvp"] = (math_jvp, 3 * fwd_flops)
    rows_out = []
    for label, (fn, flops) in candidates.items():
        try:
            measured = measure(fn, rep_ms=50 if quick else 200)
        except RuntimeError as exc:  # a backend that does not take this shape
            print(f"{name} {label}: {exc}".splitlines()[0])
            measured = None
        ms, peak = measured if measured else (None, None)
        rows_out.append(dict(shape=name, impl=label, ms=ms, peak_gib=None if peak is None else peak / 2**30,
                             tflops=None if ms is None else flops / ms / 1e9))
    ms = {row["impl"]: row["ms"] for row in rows_out}
    flash_ms, cudnn_ms = ms["sdpa flash fwd"], ms["sdpa cudnn fwd"]
    for row in rows_out:
        row["ratio_to_flash"] = None if row["ms"] is None or flash_ms is None else row["ms"] / flash_ms
        row["ratio_to_cudnn"] = None if row["ms"] is None or cudnn_ms is None else row["ms"] / cudnn_ms
    return dict(shape=name, dims=dict(B=batch, H=heads, Sq=seqlen_q, Sk=seqlen_k, D=head_dim),
                first_call_s=first_call_s, out_t_rel_error=error, rows=rows_out)


def fmt(value, spec):
    return "OOM" if value is None else format(value, spec)


def markdown(results):
    lines = ["| shape | impl | ms | TFLOP/s | peak GiB | x flash fwd | x cuDNN fwd |", "|---|---|---|---|---|---|---|"]
    for res in results:
        d = res["dims"]
        shape = f"{res['shape']} (B{d['B']} H{d['H']} Sq{d['Sq']} Sk{d['Sk']})"
        for row in res["rows"]:
            lines.append(f"| {shape} | {row['impl']} | {fmt(row['ms'], '.3f')} | {fmt(row['tflops'], '.0f')} "
                         f"| {fmt(row['peak_gib'], '.2f')} | {fmt(row['ratio_to_flash'], '.2f')} "
                         f"| {fmt(row['ratio_to_cudnn'], '.2f')} |")
    lines += ["", "| shape | first call (compile + autotune) s | bf16 out_t rel. error (slice) |", "|---|---|---|"]
    lines += [f"| {res['shape']} | {res['first_call_s']:.1f} | {res['out_t_rel_error']:.2e} |" for res in results]
    return "\n".join(lines)


def cpu_smoke():
    inputs = make_inputs(1, 2, 37, 53, 32, torch.bfloat16, "cpu")
    result = flash_attention_jvp(*inputs)
    error = out_t_error(inputs, result.out_t, torch.arange(37))
    print(f"cpu smoke: bf16 out_t rel. error {error:.2e}")
    if not math.isfinite(error) or error > 2e-2:
        raise SystemExit("cpu smoke: error too large")


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=names_of(SHAPES, "shapes"), default=",".join(SHAPES),
                        help=f"comma-separated subset of {list(SHAPES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter timing, no math-SDPA jvp")
    parser.add_argument("--json", metavar="PATH", type=output_file,
                        help="write the results as JSON (default: print only)")
    parser.add_argument("--cpu-smoke", action="store_true", help="one tiny call on CPU (TRITON_INTERPRET=1), no timing")
    return parser


def main():
    args = build_parser().parse_args()
    if args.cpu_smoke:
        cpu_smoke()
        return
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --cpu-smoke on CPU")
    results = []
    for name in args.shapes.split(","):
        results.append(bench_shape(name, args.quick))
        torch.cuda.empty_cache()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, results=results), f, indent=2)


if __name__ == "__main__":
    main()
