"""Sweep of the attention forward+JVP kernels' launch configs at the Wan shapes, in one run (bf16, one GPU).

Autotuning keeps only the winner of ``_CONFIGS``, the Hopper kernel runs the one pipeline shape
``flash_jvp_hopper.CONFIGS`` names for each kind of call, and short keys on sm_90 run the Triton kernel at
``flash_jvp.PINNED_CONFIGS`` (``flash_jvp.route``). This times every candidate on its own:
the Gluon kernel's ``flash_jvp_hopper.CANDIDATES`` (on sm_90) and the Triton kernel's
``TRITON_CANDIDATES`` below, next to SDPA's flash and cuDNN forwards and ``flash_attention_jvp``
as dispatched, all in the same process. Each candidate's outputs are checked against the float64
reference on three slices of query rows (first, middle, last): out and out_t within
``ERROR_LIMIT`` (relative Frobenius error), lse and lse_t within 1.5x the error of the kernel's
current config (the rule of tests/kernels/test_flash_jvp_hopper.py), and every output finite. A
config that fails, does not fit or gives wrong numbers is listed as such and never picked.

Cases (``--cases``): self-attention at Wan 1.3B (keys with tangents); cross-attention to 512 text
keys and an odd cross shape (226 keys, batch 2), each with constant keys and values (the models'
case, ``-const``) and with key tangents. Storage as the Wan model passes it: [B, H, S, D] views of
[S, B, H, D] tensors. It prints one table per case, then the fastest correct config of each kernel
per case (the Triton ones at short keys belong in ``flash_jvp.PINNED_CONFIGS``) and the
``flash_jvp_hopper.CONFIGS`` to paste (per kind of call, the candidate whose worst time over its
cases, relative to each case's fastest, is least). ``--json`` writes all rows.

    python tools/tune_flash_jvp.py [--cases self,cross-const,odd-const] [--json PATH] [--rep-ms 100]
                                   [--configs 64,64,4,3,1 ...] [--hopper-configs 64,64,2,0 ...]
    TRITON_INTERPRET=1 python tools/tune_flash_jvp.py --cpu-smoke
"""
import argparse
import json
import math
import time
from typing import NamedTuple

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from bench_flags import names_of, output_file  # tools/ is this script's directory
from megatron_rcm import cli
from megatron_rcm.kernels import flash_attention_jvp, flash_jvp
from megatron_rcm.kernels.reference import attention_reference

# (BLOCK_M, BLOCK_N, num_warps, num_stages[, 1 = tensor descriptors (TMA)]): what autotuning keeps
# at head dim 128, then the runners-up of the earlier sweeps (docs/benchmarks.md)
TRITON_CANDIDATES = [
    (64, 64, 4, 3, 1), (128, 64, 8, 2, 1), (128, 32, 8, 3), (128, 64, 8, 2), (64, 32, 4, 2),
    (128, 32, 8, 3, 1), (64, 32, 4, 2, 1),
]
ERROR_LIMIT = 5e-3  # bf16 out / out_t against float64, as the Wan-shape GPU test asks
# Triton's interpreter converts float32 to bf16 by truncation, not rounding: its bf16 errors are
# about 6e-3, and tests/kernels allow 2e-2 there
INTERPRETER_ERROR_LIMIT = 2e-2
SLICE_ROWS = 64


class Case(NamedTuple):
    batch: int
    heads: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    kv_tangent: bool

    @property
    def short_keys(self):
        return self.seqlen_k <= flash_jvp.SHORT_KEYS


CASES = {
    "self": Case(1, 12, 32760, 32760, 128, True),
    "cross-const": Case(1, 12, 32760, 512, 128, False),
    "odd-const": Case(2, 12, 20001, 226, 128, False),
    "cross": Case(1, 12, 32760, 512, 128, True),
    "odd": Case(2, 12, 20001, 226, 128, True),
}
SMOKE_CASES = {"smoke": Case(1, 2, 150, 45, 32, True), "smoke-const": Case(1, 2, 150, 45, 32, False)}


def _launch_config(fields, flags):
    """argparse type: ``fields`` comma-separated integers >= 1, then optionally the first of ``flags``,
    or the first ones, each as 0 or 1; the text back as given (``_triton_candidates`` and
    ``_hopper_candidates`` read it)."""
    def parse(text):
        parts = text.split(",")
        numbers, switches = parts[:len(fields)], parts[len(fields):]
        if (len(numbers) < len(fields) or not all(n.isdigit() and int(n) >= 1 for n in numbers)
                or len(switches) > len(flags) or not all(s in ("0", "1") for s in switches)):
            optional = "".join(f"[,{flag}" for flag in flags) + "]" * len(flags)
            raise argparse.ArgumentTypeError(f"expected {','.join(fields)}{optional} ({len(fields)} integers >= 1, "
                                             f"then 0 or 1 for each optional flag), got {text!r}")
        return text
    return parse


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=names_of(CASES, "cases"), default=",".join(CASES),
                   help=f"comma-separated subset of {list(CASES)} (default: all; --cpu-smoke runs its own)")
    p.add_argument("--configs", nargs="*", type=_launch_config(("BLOCK_M", "BLOCK_N", "warps", "stages"), ("TMA",)),
                   help="Triton kernel: BLOCK_M,BLOCK_N,warps,stages[,1 = tensor descriptors] (default: "
                        "TRITON_CANDIDATES, two tiny ones with --cpu-smoke; the flag alone: skip the kernel)")
    p.add_argument("--hopper-configs", nargs="*", type=_launch_config(("BLOCK_M", "BLOCK_N", "stages"), ("EARLY", "PEEL")),
                   help="Hopper kernel, timed on sm_90 only: BLOCK_M,BLOCK_N,stages[,1 = early rescale[,1 = last key "
                        "block after the loop]] (default: "
                        "flash_jvp_hopper.CANDIDATES; the flag alone: skip the kernel)")
    p.add_argument("--rep-ms", type=cli.positive_float, default=100,
                   help="milliseconds of timing per candidate, after 25 ms of warm-up (triton.testing.do_bench's "
                        "rep) (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", type=output_file,
                   help="also write every row and the picks as JSON (default: print only)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny cases, two Triton configs, under TRITON_INTERPRET=1 (no timing, no Hopper kernel)")
    return p


def _inputs(case, device):
    """(q, k, v, q_t, k_t, v_t): [B, H, S, D] views of [S, B, H, D] storage; k_t = v_t = None for
    constant keys and values."""
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(seqlen):
        t = torch.randn(seqlen, case.batch, case.heads, case.head_dim, device=device, generator=gen)
        return t.to(torch.bfloat16).permute(1, 2, 0, 3)

    q, k, v, q_t = rnd(case.seqlen_q), rnd(case.seqlen_k), rnd(case.seqlen_k), rnd(case.seqlen_q)
    k_t, v_t = (rnd(case.seqlen_k), rnd(case.seqlen_k)) if case.kv_tangent else (None, None)
    return q, k, v, q_t, k_t, v_t


def _checked_rows(seqlen_q):
    """Query rows of three slices: the first, one in the middle (not block-aligned), the last."""
    middle = max(0, min(seqlen_q // 2 - 37, seqlen_q - SLICE_ROWS))
    starts = sorted({0, middle, max(0, seqlen_q - SLICE_ROWS)})
    return torch.unique(torch.cat([torch.arange(s, min(s + SLICE_ROWS, seqlen_q)) for s in starts]))


def _reference(inputs, rows):
    """(out, out_t, lse, lse_t) of the float64 reference at ``rows``, by torch.func.jvp."""
    q, k, v, q_t, k_t, v_t = inputs
    k_t = torch.zeros_like(k) if k_t is None else k_t
    v_t = torch.zeros_like(v) if v_t is None else v_t
    primals = (q[:, :, rows].double(), k.double(), v.double())
    (out, lse), (out_t, lse_t) = torch.func.jvp(attention_reference, primals,
                                                (q_t[:, :, rows].double(), k_t.double(), v_t.double()))
    return out, out_t, lse, lse_t


def _errors(outputs, reference, rows):
    from megatron_rcm.testing import norm_relative_error  # megatron-core: seconds, only once a sweep runs

    return [norm_relative_error(o[:, :, rows], r) for o, r in zip(outputs, reference)]


def _time_ms(fn, device, rep_ms):
    if device.type == "cpu":
        return float("nan")
    return triton.testing.do_bench(fn, warmup=25, rep=rep_ms)


def _hopper_candidates(numbers):
    from megatron_rcm.kernels import flash_jvp_hopper

    if numbers is None:
        return list(flash_jvp_hopper.CANDIDATES)
    return [flash_jvp_hopper.HopperConfig(*map(int, n.split(",")[:3]), *map(bool, map(int, n.split(",")[3:])))
            for n in numbers]


def _triton_candidates(numbers, smoke):
    if smoke:
        return [flash_jvp.launch_config(32, 16, 4, 2), flash_jvp.launch_config(32, 16, 4, 2, tma=True)]
    numbers = TRITON_CANDIDATES if numbers is None else [tuple(map(int, n.split(","))) for n in numbers]
    return [flash_jvp.launch_config(*n[:4], tma=bool(n[4]) if len(n) > 4 else False) for n in numbers]


def _triton_name(config):
    k = config.kwargs
    return f"triton {k['BLOCK_M']}x{k['BLOCK_N']} w{config.num_warps} s{config.num_stages}" + (
        " tma" if k["USE_TMA"] else "")


def _hopper_name(config):
    return (f"hopper {config.block_m}x{config.block_n} s{config.stages}" + (" early" if config.early_rescale else "")
            + (" peel" if config.peel_last else ""))


def sweep_case(name, case, args, device):
    """Rows (dicts) for one case: the SDPA forwards, the dispatched kernel, each candidate."""
    inputs = _inputs(case, device)
    q, k, v, q_t, k_t, v_t = inputs
    scale = case.head_dim ** -0.5
    rows_checked = _checked_rows(case.seqlen_q).to(device)
    reference = _reference(inputs, rows_checked)
    gemm_flop = 2 * case.batch * case.heads * case.seqlen_q * case.seqlen_k * case.head_dim
    jvp_gemms = 6 if case.kv_tangent else 4
    rows = []

    def add(kernel, label, run, gemms, config=None, current=False):
        row = dict(case=name, kernel=kernel, config=label, ms=None, tflops=None, errors=None, status="ok",
                   current=current, numbers=config)
        try:
            outputs = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
        except Exception as error:  # shared memory or registers exceeded, a compile error: the sweep goes on
            row["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            rows.append(row)
            return
        if outputs is not None:
            row["errors"] = _errors(outputs, reference, rows_checked)
            if not all(bool(torch.isfinite(o).all()) for o in outputs):
                row["status"] = "wrong: non-finite outputs"
        row["ms"] = _time_ms(run, device, args.rep_ms)
        if math.isfinite(row["ms"]):
            row["tflops"] = gemms * gemm_flop / row["ms"] / 1e9
        rows.append(row)

    if device.type == "cuda":
        for label, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            def forward(backend=backend):
                with sdpa_kernel(backend):
                    scaled_dot_product_attention(q, k, v, scale=scale)
            add("sdpa forward", label, forward, 2)
    route = flash_jvp._route(*inputs, None)
    dispatched = (_hopper_name(route.config) if route.kernel == "hopper" else
                  _triton_name(route.config) if route.config else "triton (autotuned)")
    add("flash_attention_jvp", dispatched, lambda: flash_attention_jvp(*inputs, softmax_scale=scale), jvp_gemms)

    if flash_jvp._hopper_kernel_serves(*inputs, None) and args.hopper_configs != []:
        from megatron_rcm.kernels import flash_jvp_hopper

        current = flash_jvp.hopper_config(case.seqlen_k, case.kv_tangent)
        for config in _hopper_candidates(args.hopper_configs):
            if not flash_jvp_hopper.fits(config, case.head_dim, case.kv_tangent):
                rows.append(dict(case=name, kernel="hopper", config=_hopper_name(config), ms=None, tflops=None,
                                 errors=None, status="does not fit shared memory", current=False,
                                 numbers=list(config)))
                continue
            add("hopper", _hopper_name(config),
                lambda c=config: flash_jvp.launch_hopper(*inputs, scale, c),
                jvp_gemms, list(config), current=config == current)
    if args.configs != []:
        in_use = {_triton_name(c) for c in ([route.config] if route.kernel == "triton" and route.config
                                            else flash_jvp._CONFIGS)}
        for config in _triton_candidates(args.configs, args.cpu_smoke):
            numbers = [config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages,
                       int(config.kwargs["USE_TMA"])]
            add("triton", _triton_name(config), lambda c=config: flash_jvp.launch(*inputs, scale, None, c),
                jvp_gemms, numbers, current=_triton_name(config) in in_use)
    _judge(rows, INTERPRETER_ERROR_LIMIT if device.type == "cpu" else ERROR_LIMIT)
    flash = next((r["ms"] for r in rows if r["config"] == "flash"), None)
    cudnn = next((r["ms"] for r in rows if r["config"] == "cudnn"), None)
    for row in rows:
        row["x_flash"] = row["ms"] / flash if row["ms"] and flash else None
        row["x_cudnn"] = row["ms"] / cudnn if row["ms"] and cudnn else None
    return rows


def _judge(rows, limit):
    """out and out_t within ``limit``; lse and lse_t within 1.5x the error of the same kernel's first
    config in use (CONFIGS' for this call; PINNED_CONFIGS' or else the first of _CONFIGS), else of the
    dispatched kernel."""
    baseline = {}
    for row in rows:
        if row["errors"] is not None and (row["current"] or row["kernel"] == "flash_attention_jvp"):
            baseline.setdefault(row["kernel"], row["errors"])
    fallback = baseline.get("flash_attention_jvp")
    for row in rows:
        if row["errors"] is None or row["status"] != "ok":
            continue
        out_err, out_t_err, lse_err, lse_t_err = row["errors"]
        base = baseline.get(row["kernel"], fallback)
        if out_err > limit or out_t_err > limit:
            row["status"] = f"wrong: out/out_t error above {limit:g}"
        elif base and (lse_err > 1.5 * base[2] + 1e-6 or lse_t_err > 1.5 * base[3] + 1e-6):
            row["status"] = "wrong: lse/lse_t error above 1.5x the current config's"


def _fmt(value, spec):
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def table(name, case, rows):
    lines = [f"### {name}: B{case.batch} H{case.heads} Sq{case.seqlen_q} Sk{case.seqlen_k} D{case.head_dim}, "
             f"{'keys with tangents' if case.kv_tangent else 'constant keys and values'}",
             "", "| kernel | config | ms | TFLOP/s | x flash fwd | x cuDNN fwd | out_t error | lse_t error | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        errors = r["errors"] or [None] * 4
        config = r["config"] + ({"hopper": " (in CONFIGS)", "triton": " (in use)"}[r["kernel"]]
                                if r["current"] else "")
        lines.append(f"| {r['kernel']} | {config} | {_fmt(r['ms'], '.3f')} | {_fmt(r['tflops'], '.0f')} | "
                     f"{_fmt(r['x_flash'], '.2f')} | {_fmt(r['x_cudnn'], '.2f')} | {_fmt(errors[1], '.2e')} | "
                     f"{_fmt(errors[3], '.2e')} | {r['status']} |")
    return "\n".join(lines)


def fastest(rows, kernel):
    timed = [r for r in rows if r["kernel"] == kernel and r["status"] == "ok" and r["ms"] is not None
             and math.isfinite(r["ms"])]
    return min(timed, key=lambda r: r["ms"]) if timed else None


def worst_ratios(results):
    """(kv_tangent, short_keys) -> {Hopper config numbers: worst ms / fastest ms over the cases of
    that kind of call}, for the configs correct in all of them."""
    ratios = {}  # kind -> one {config: ms / fastest ms} per case
    for case, rows in results.values():
        best = fastest(rows, "hopper")
        ratios.setdefault((case.kv_tangent, case.short_keys), []).append(
            {} if best is None else {tuple(r["numbers"]): r["ms"] / best["ms"] for r in rows
                                     if r["kernel"] == "hopper" and r["status"] == "ok" and r["ms"] is not None})
    return {kind: {config: max(r[config] for r in per_case) for config in set.intersection(*map(set, per_case))}
            for kind, per_case in ratios.items()}


def hopper_picks(results):
    """(kv_tangent, short_keys) -> (config numbers, worst ratio): the least worst of ``worst_ratios``."""
    return {kind: min(worst.items(), key=lambda item: item[1]) for kind, worst in worst_ratios(results).items()
            if worst}


def main():
    args = build_parser().parse_args()
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    cases = SMOKE_CASES if args.cpu_smoke else {n: CASES[n] for n in args.cases.split(",")}
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter)"
    print(f"attention forward+JVP sweep, bf16, [S, B, H, D] storage, {device_name}, torch {torch.__version__}, "
          f"Triton {triton.__version__}. TFLOP/s count the GEMMs done: 2 for a forward, 6 for forward+JVP, 4 "
          f"with constant keys and values.\n")
    results = {}
    for name, case in cases.items():
        start = time.perf_counter()
        rows = sweep_case(name, case, args, device)
        results[name] = (case, rows)
        print(table(name, case, rows))
        print(f"\n({time.perf_counter() - start:.0f} s with compilation)\n")
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print("### fastest correct config per case\n\n| case | kernel | config | ms | x flash fwd | TFLOP/s |\n"
          "|---|---|---|---|---|---|")
    for name, (case, rows) in results.items():
        for kernel in ("hopper", "triton"):
            best = fastest(rows, kernel)
            if best:
                print(f"| {name} | {kernel} | {best['config']} | {_fmt(best['ms'], '.3f')} | "
                      f"{_fmt(best['x_flash'], '.2f')} | {_fmt(best['tflops'], '.0f')} |")
    picks, ratios = hopper_picks(results), worst_ratios(results)
    if picks:
        from megatron_rcm.kernels import flash_jvp_hopper

        print("\nflash_jvp_hopper.CONFIGS from this sweep (keys: keys carry a tangent, short keys; after #, the "
              "worst time over the kind's cases relative to each case's fastest, then the current config's):")
        for (kv_tangent, short), (config, worst) in sorted(picks.items()):
            current = tuple(flash_jvp_hopper.CONFIGS[(kv_tangent, short)])
            current_worst = ratios[(kv_tangent, short)].get(current)
            print(f"    ({kv_tangent}, {short}): HopperConfig{config},  # {worst:.3f}; now "
                  f"HopperConfig{current}: {_fmt(current_worst, '.3f')}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device_name, torch=torch.__version__, triton=triton.__version__,
                           cases={n: dict(case._asdict(), rows=rows) for n, (case, rows) in results.items()},
                           hopper_configs=[dict(kv_tangent=k[0], short_keys=k[1], config=c, worst_ratio=w)
                                           for k, (c, w) in picks.items()]), f, indent=1)
    wrong = [(n, r["config"]) for n, (_, rows) in results.items() for r in rows if r["status"].startswith("wrong")]
    if wrong:
        raise SystemExit(f"wrong numbers from {wrong}")


if __name__ == "__main__":
    main()
