"""Benchmark of plain attention (no tangent) as the models run it: ``megatron_rcm.kernels.attention`` (on
an sm_90 GPU with flash-attn-4 installed: FlashAttention-4 for long keys, ``kernels.fa4``) beside SDPA's
cuDNN and flash backends, forward and forward + backward, bf16, in one run.

Inputs are [B, H, S, D] views of [S, B, H, D] storage, as the models pass them. Per shape: each
implementation's first call (compile), then its times in interleaved rounds (every variant once a
round, the order reversed every other round, the median kept: an H200's clock drifts by a few percent
within a run), as ms and TFLOP/s (forward + backward counts 3.5 forwards' FLOPs). Before the timing,
each implementation's output and q/k/v gradients against float64 at small shapes.

    python tools/bench_plain_attention.py [--shapes wan1.3b,cross,cross_odd] [--rounds 5] [--json PATH]
    python tools/bench_plain_attention.py --cpu-smoke     # the error check at a tiny shape, on CPU
"""
import argparse
import json
import statistics
import time

from bench_flags import names_of, output_file  # tools/ is this script's directory
from megatron_rcm import cli
from megatron_rcm.atomic_output import atomic_write_bytes

# name: (B, H, Sq, Sk, D); the Wan-1.3B self-attention and its two cross-attention shapes
SHAPES = {
    "wan1.3b": (1, 12, 32760, 32760, 128),
    "wan1.3b_cfg": (2, 12, 32760, 32760, 128),  # the guided teacher's two branches as one batch
    "cross": (1, 12, 32760, 512, 128),
    "cross_odd": (2, 12, 20001, 226, 128),
}
ERROR_SHAPES = {"self": (1, 4, 3000, 3000, 128), "cross": (2, 4, 2001, 226, 128), "long_keys": (2, 3, 777, 4097, 64)}


def _implementations():
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    from megatron_rcm.kernels import attention

    def sdpa(backend):
        def run(q, k, v):
            with sdpa_kernel([backend]):
                return scaled_dot_product_attention(q, k, v)
        return run

    impls = {"models": attention}
    if torch.cuda.is_available():
        impls |= {"cudnn": sdpa(SDPBackend.CUDNN_ATTENTION), "flash": sdpa(SDPBackend.FLASH_ATTENTION)}
    return impls


def make_inputs(batch, heads, seqlen_q, seqlen_k, head_dim, dtype, device, seed=0):
    """(q, k, v, d_out) as [B, H, S, D] views of [S, B, H, D] storage."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)

    def rnd(seqlen):
        storage = torch.randn(seqlen, batch, heads, head_dim, generator=gen, device=device, dtype=dtype)
        return storage.permute(1, 2, 0, 3)

    return rnd(seqlen_q), rnd(seqlen_k), rnd(seqlen_k), rnd(seqlen_q)


def forward_and_grads(fn, q, k, v, d_out):
    primals = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*primals)
    out.backward(d_out)
    return [out.detach()] + [t.grad for t in primals]


def errors(device, shapes):
    """{shape: {impl: [out, dq, dk, dv] relative errors against float64}}."""
    import torch

    from megatron_rcm.kernels.reference import attention_reference
    from megatron_rcm.testing import relative_error

    found = {}
    for name, shape in shapes.items():
        q, k, v, d_out = make_inputs(*shape, torch.bfloat16, device, seed=1)
        want = forward_and_grads(lambda *t: attention_reference(*t)[0], *(t.double() for t in (q, k, v)),
                                 d_out.double())
        found[name] = {impl: [relative_error(g, w) for g, w in zip(forward_and_grads(fn, q, k, v, d_out), want)]
                       for impl, fn in _implementations().items()}
    return found


def _synchronized_seconds(fn):
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def time_shape(name, rounds):
    """Rows (shape, case, first call s, median ms, TFLOP/s) for every implementation at SHAPES[name]."""
    import torch

    batch, heads, seqlen_q, seqlen_k, head_dim = SHAPES[name]
    flops = 4 * batch * heads * seqlen_q * seqlen_k * head_dim
    q, k, v, d_out = make_inputs(batch, heads, seqlen_q, seqlen_k, head_dim, torch.bfloat16, "cuda")
    grads = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    cases = {}
    for impl, fn in _implementations().items():
        def forward(fn=fn):
            with torch.no_grad():
                fn(q, k, v)

        def forward_backward(fn=fn):
            fn(*grads).backward(d_out)
        cases[f"{impl} forward"] = (forward, flops)
        cases[f"{impl} forward+backward"] = (forward_backward, 3.5 * flops)
    first = {case: _synchronized_seconds(fn) for case, (fn, _) in cases.items()}
    reps = max(1, int(0.2 / max(_synchronized_seconds(cases[case][0]) for case in cases)))
    times = {case: [] for case in cases}
    for r in range(rounds):
        for case in (list(cases) if r % 2 == 0 else list(reversed(cases))):
            fn = cases[case][0]
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            torch.cuda.synchronize()
            times[case].append(start.elapsed_time(end) / reps)
    return [dict(shape=name, case=case, first_call_s=first[case], ms=statistics.median(times[case]),
                 tflops=cases[case][1] / statistics.median(times[case]) / 1e9) for case in cases]


def markdown(found, rows):
    lines = ["| shape | implementation | out | dq | dk | dv |", "|---|---|---|---|---|---|"]
    lines += [f"| {shape} | {impl} | " + " | ".join(f"{e:.2e}" for e in errs) + " |"
              for shape, by_impl in found.items() for impl, errs in by_impl.items()]
    if rows:
        lines += ["", "| shape | case | first call s | ms | TFLOP/s |", "|---|---|---|---|---|"]
        lines += [f"| {r['shape']} | {r['case']} | {r['first_call_s']:.2f} | {r['ms']:.3f} | {r['tflops']:.0f} |"
                  for r in rows]
    return "\n".join(lines)


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=names_of(SHAPES, "shapes"), default=",".join(SHAPES),
                        help=f"comma-separated subset of {list(SHAPES)} (default: all)")
    parser.add_argument("--rounds", type=cli.positive_int, default=5, help="timing rounds (default: 5)")
    parser.add_argument("--json", metavar="PATH", type=output_file,
                        help="write the results as JSON (default: print only)")
    parser.add_argument("--cpu-smoke", action="store_true", help="the error check at a tiny shape on CPU, no timing")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()
    import torch

    from megatron_rcm.kernels import fa4

    try:
        fa4.enabled_by_environment()
    except ValueError as error:
        parser.error(str(error))

    if args.cpu_smoke:
        found = errors("cpu", {"tiny": (1, 2, 37, 53, 32)})
        print(markdown(found, []))
        if max(found["tiny"]["models"]) > 2e-2:
            raise SystemExit("cpu smoke: error too large")
        return
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --cpu-smoke on CPU")
    start = time.perf_counter()
    print(f"flash-attn-4 used: {fa4.available()} ({time.perf_counter() - start:.1f} s to import)")
    found = errors("cuda", ERROR_SHAPES)
    rows = []
    for name in args.shapes.split(","):
        print(f"timing {name} {SHAPES[name]} ...", flush=True)
        rows += time_shape(name, args.rounds)
        torch.cuda.empty_cache()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(markdown(found, rows))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(dict(device=torch.cuda.get_device_name(), errors=found, rows=rows),
                                                 indent=2).encode())


if __name__ == "__main__":
    main()
