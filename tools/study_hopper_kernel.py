"""What the Hopper attention kernel's time is made of, at the Wan self-attention shape (bf16, one sm_90 GPU).

Two studies, each beside SDPA's flash forward and timed in interleaved rounds: every variant once a
round, the order reversed every other round, and the median of the rounds kept (an H200's clock
drifts by a few percent within one call, so variants timed one after the other cannot be compared).

Ablations (without ``--against``): ``flash_jvp_hopper.py`` with one piece of its key loop taken out,
each compiled as a module of its own. Their outputs are wrong; their times say what each piece costs.

``--against FILE``: this tree's kernel against another version of ``flash_jvp_hopper.py`` (for instance
``git show BASE:megatron_rcm/kernels/flash_jvp_hopper.py > old.py``) at self-attention, at 1100 keys
and at 1100 constant keys, with each one's errors against float64 on three slices of query rows.

``--configs C ...``: this tree's kernel at several pipeline shapes (``flash_jvp_hopper.HopperConfig``
as BLOCK_M,BLOCK_N,stages[,early rescale[,last block after the loop]], 0 or 1 each), timed against
each other at the same shapes and with the same error check as ``--against``.

Each compiled kernel's line gives its registers and the order of its SASS as run lengths: score
GEMMs (S), value GEMMs (V), waits for wgmma groups (Dn: until n groups remain), exp2 (E) and CTA
barriers (B). In the key loop, ``V12 D3 ... D0 E34`` means ptxas waits for the value GEMMs before the
softmax; ``V12 D3 ... E34 ... D0`` would mean the softmax overlaps them. An ablation with fewer GEMM
instructions than the kernel is flagged: the compiler dropped work whose result it found constant.
``--sass`` prints these without a GPU; Triton 3.6 (its ptxas 12.8) gives the same SASS order on a CPU
as on an H200, while Triton 3.9 serialises every wgmma of this kernel.

    python tools/study_hopper_kernel.py [--rounds 5] [--rep-ms 300]
    python tools/study_hopper_kernel.py --against old.py [--rounds 7]
    python tools/study_hopper_kernel.py --configs 64,64,1 64,64,1,0,1
    python tools/study_hopper_kernel.py --sass [--configs ...]   # no GPU: GEMM counts and SASS order only
"""
import importlib.util
import math
import statistics
import sys
import tempfile
from pathlib import Path

from bench_flags import input_file  # tools/ is this script's directory
from megatron_rcm import cli
from tune_flash_jvp import _hopper_candidates, _launch_config

KERNEL = Path(__file__).resolve().parents[1] / "megatron_rcm" / "kernels" / "flash_jvp_hopper.py"
# lines of flash_jvp_hopper.py that the ablations change
_EXP2 = "    p = gl.exp2(s * qk_scale - m_new[:, None])\n"
_MASK_BRANCH = ("    if start_n + BLOCK_N > seqlen_k:  # the last, partial block: TMA filled its missing keys "
                "with zeros\n")
# name: (what is taken out, [(source text, replacement)]); each source text must occur in the kernel
ABLATIONS = {
    "no_exp2": ("exp2 of the scores (P = the shifted scores)", [(_EXP2, "    p = s * qk_scale - m_new[:, None]\n")]),
    "no_rescale": ("the rescale of both accumulators by alpha",
                   [("    return acc * alpha_o, acc_t * alpha_o\n", "    return acc, acc_t\n")]),
    "no_barriers": ("the CTA barriers before the refills", [("_cta_barrier()\n", "pass\n")]),
    "no_product": ("the P * dS product (P * dS = dS)", [("    p_ds = p * (ds * softmax_scale)\n", "    p_ds = ds\n")]),
    "no_mask_branch": ("the branch that masks a partial last key block", [(_MASK_BRANCH, "    if False:\n")]),
    # Not here: without the row max P becomes a constant, and without the row sums l and r stay 0, so
    # out_t is a constant NaN; either way the compiler drops GEMMs (gemm_instructions shows it).
}
SHAPES = {  # name: (batch, heads, query rows, keys, head dim, keys carry a tangent)
    "self": (1, 12, 32760, 32760, 128, True),
    "self-1100-keys": (2, 12, 20001, 1100, 128, True),
    "cross-1100-const": (2, 12, 20001, 1100, 128, False),
}


def ablated_source(source, name):
    """The kernel's source with ABLATIONS[name] applied; a ValueError names a text that is gone."""
    for old, new in ABLATIONS[name][1]:
        if old not in source:
            raise ValueError(f"ablation {name}: the kernel no longer has {old.strip()!r}; update ABLATIONS")
        source = source.replace(old, new)
    return source


def sass_order(sass):
    """The run-length order of S, V, Dn, E and B in a SASS listing (see the module docstring)."""
    runs = []
    for line in sass.splitlines():
        token = ("S" if "HGMMA.64x64" in line or "HGMMA.64x32" in line else "V" if "HGMMA.64x128" in line
                 else "E" if "MUFU.EX2" in line else "B" if "BAR.SYNC" in line
                 else "D" + line.split("0x")[-1].strip(" ;") if "WARPGROUP.DEPBAR" in line else None)
        if token is None:
            continue
        if runs and runs[-1][0] == token:
            runs[-1][1] += 1
        else:
            runs.append([token, 1])
    return " ".join(token if count == 1 else f"{token}{count}" for token, count in runs)


def gemm_instructions(sass):
    """wgmma instructions in a SASS listing: an ablation with fewer than the kernel lost work to the
    compiler (a result it found constant), and its time is not a measurement."""
    return sass.count("HGMMA")


def _module(name, source, folder):
    path = Path(folder) / f"hopper_{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"hopper_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _describe(sass, kernel_gemms):
    gemms = gemm_instructions(sass)
    flag = ("" if kernel_gemms in (None, gemms)
            else f" (the kernel has {kernel_gemms}: GEMMs dropped, not a measurement)")
    return f"{gemms} GEMM instructions{flag}; {sass_order(sass)}"


def _report(name, module, kernel_gemms):
    """Prints the compiled kernel's registers and SASS (its first specialisation, the shape timed
    first); returns its GEMM instruction count."""
    kernel = next(k for cache in module._flash_jvp_hopper_kernel.device_caches.values() for k in cache[0].values())
    print(f"  {name}: {kernel.n_regs} registers, {kernel.n_spills} spilled, "
          f"{_describe(kernel.asm['sass'], kernel_gemms)}", flush=True)
    return gemm_instructions(kernel.asm["sass"])


def compiled_sass(module, config=None):
    """The SASS of module's kernel at ``config`` (None: its self-attention pipeline shape), compiled for
    sm_90a on any machine (megatron_rcm.kernels.static_build)."""
    from megatron_rcm.kernels.static_build import hopper_kernel

    config = config or module.CONFIGS[(True, False)]
    return hopper_kernel(config, jit_function=module._flash_jvp_hopper_kernel).asm["sass"]


def _timed(runs, rounds, rep_ms):
    """{name: median ms} over interleaved rounds of triton.testing.do_bench."""
    import triton

    times = {name: [] for name in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            times[name].append(triton.testing.do_bench(runs[name], warmup=10, rep=rep_ms))
        print(f"  timing round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return {name: statistics.median(t) for name, t in times.items()}


def study(kernels, shapes, args, check_errors):
    """Times each kernel, {name: (module, pipeline shape)}, at each shape next to SDPA flash; prints
    one table row per kernel. A shape of None is the first module's ``CONFIGS`` entry for the call.
    With one module, the SASS report is left out (it shows the first compiled specialisation)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    import tune_flash_jvp as tune
    from megatron_rcm.kernels import flash_jvp

    flash_jvp._install_descriptor_allocator()
    first = next(iter(kernels))
    report = len({id(module) for module, _ in kernels.values()}) > 1
    print(f"| shape | kernel | median ms | x flash fwd | x {first} |\n|---|---|---|---|---|")
    for shape in shapes:
        case = tune.Case(*SHAPES[shape])
        inputs = tune._inputs(case, torch.device("cuda"))
        q, k, v, q_t, k_t, v_t = inputs
        outputs = flash_jvp._empty_outputs(q, k)
        default = kernels[first][0].CONFIGS[(case.kv_tangent, False)]
        scale = 1 / math.sqrt(case.head_dim)
        runs = {name: (lambda m=m, c=c or default: m.launch(q, k, v, q_t, k_t, v_t, scale, outputs, c))
                for name, (m, c) in kernels.items()}
        rows = tune._checked_rows(case.seqlen_q) if check_errors else None
        reference = tune._reference(inputs, rows) if check_errors else None
        kernel_gemms = None
        for name, run in runs.items():
            run()
            torch.cuda.synchronize()
            if check_errors:
                errors = " / ".join(f"{e:.2e}" for e in tune._errors(outputs, reference, rows))
                print(f"  {shape}, {name}: out / out_t / lse / lse_t error against float64 {errors}")
            if report and shape == shapes[0]:
                gemms = _report(name, kernels[name][0], kernel_gemms)
                kernel_gemms = gemms if kernel_gemms is None else kernel_gemms

        def flash():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return scaled_dot_product_attention(q, k, v)

        runs["sdpa flash fwd"] = flash
        ms = _timed(runs, args.rounds, args.rep_ms)
        for name in runs:
            print(f"| {shape} | {name} | {ms[name]:.3f} | {ms[name] / ms['sdpa flash fwd']:.3f} | "
                  f"{ms[first] / ms[name]:.3f} |", flush=True)


def _config_name(config):
    return (f"{config.block_m}x{config.block_n} s{config.stages}" + (" early" if config.early_rescale else "")
            + (" peel" if config.peel_last else ""))


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", type=input_file, metavar="FILE",
                   help="time this tree's kernel against FILE, another version of flash_jvp_hopper.py, instead "
                        "of the ablations (default: the ablations)")
    p.add_argument("--configs", nargs="+", metavar="C",
                   type=_launch_config(("BLOCK_M", "BLOCK_N", "stages"), ("EARLY", "PEEL")),
                   help="time this tree's kernel at these pipeline shapes, BLOCK_M,BLOCK_N,stages[,early "
                        "rescale[,last block after the loop]] (0 or 1 each), instead of the ablations (default: "
                        "the ablations)")
    p.add_argument("--sass", action="store_true",
                   help="no GPU: compile the kernel and each ablation for sm_90a here and print their GEMM "
                        "instruction counts and SASS order only")
    p.add_argument("--rounds", type=cli.positive_int, default=5,
                   help="interleaved timing rounds (default: %(default)s)")
    p.add_argument("--rep-ms", type=cli.positive_float, default=300,
                   help="milliseconds of each do_bench run (default: %(default)s)")
    return p


def _checked_configs(parser, args):
    """--configs as pipeline shapes, each one that fits a CTA with key tangents (two of SHAPES have them)."""
    if args.against and args.configs:
        parser.error("give --against or --configs, not both")
    if not args.configs:
        return None
    from megatron_rcm.kernels.flash_jvp_hopper import fits

    configs = _hopper_candidates(args.configs)
    for text, config in zip(args.configs, configs):
        if not fits(config, 128, kv_tangent=True):
            parser.error(f"--configs {text}: needs {config.shared_memory_bytes(128, True) // 1024} KiB of shared "
                         "memory at head dim 128 with key tangents; a CTA has 227 KiB")
    return configs


def main():
    parser = build_parser()
    args = parser.parse_args()
    configs = _checked_configs(parser, args)
    source = KERNEL.read_text()
    with tempfile.TemporaryDirectory() as folder:
        modules = {"kernel": _module("kernel", source, folder)}
        if args.sass and configs:
            for config in configs:
                print(f"  {config}: {_describe(compiled_sass(modules['kernel'], config), None)}", flush=True)
            return
        if not (configs or args.against):
            modules.update((name, _module(name, ablated_source(source, name), folder)) for name in ABLATIONS)
            for name, (what, _) in ABLATIONS.items():
                print(f"{name}: without {what}")
        if args.sass:
            kernel_gemms = None
            for name, module in modules.items():
                sass = compiled_sass(module)
                print(f"  {name}: {_describe(sass, kernel_gemms)}", flush=True)
                kernel_gemms = kernel_gemms or gemm_instructions(sass)
            return
        import torch

        if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
            cli.fail(parser.prog, "this study needs an sm_90 GPU (H100/H200): the Hopper kernel runs nowhere else "
                     "(--sass compiles without one)")
        if configs:
            study({_config_name(c): (modules["kernel"], c) for c in configs}, list(SHAPES), args, check_errors=True)
        elif args.against:
            other = _module("other", Path(args.against).read_text(), folder)
            study({"other": (other, None), "this tree": (modules["kernel"], None)}, list(SHAPES), args,
                  check_errors=True)
        else:
            study({name: (module, None) for name, module in modules.items()}, ["self"], args, check_errors=False)


if __name__ == "__main__":
    main()
