"""Benchmark of the DiT block's compiled elementwise pieces (megatron_rcm.models.elementwise) at a
model's activation shapes, under several TorchInductor option sets, in one run (bf16, CUDA).

For each piece and form (plain, tangent: primal and tangent stacked, backward) and each option set:
the first call's seconds (compilation and any tuning), the median time of a call, and the
bandwidth it reaches counting each input and output tensor once (a lower bound on the bytes
moved; the card's peak is about 4.8 TB/s on an H200). Option set "models" is how the models
compile the pieces (``Elementwise.compile_options``); the others add TorchInductor options.
A backward form that runs as a hand-written kernel (``Elementwise.backward_kernel``) is timed as
the models run it, the same under every option set.

``--gelu-launches`` times instead the GELU backward at the FFN shape: torch.compile of its formula
(the models' options, and coordinate-descent tuning) beside the hand-written kernel
(``megatron_rcm.kernels.gelu``) at each launch shape, each checked against float64.

    python tools/bench_elementwise.py [--tokens 32760] [--options models,coordinate_descent] [--json PATH]
    python tools/bench_elementwise.py --gelu-launches 32,256,256,8 64,128,512,4 [--tokens 32760]
    python tools/bench_elementwise.py --cpu-smoke      # plumbing only: tiny shapes, eager, on CPU
"""
import argparse
import json
import statistics
import time

from bench_flags import names_of, output_file  # tools/ is this script's directory
from megatron_rcm import cli
from megatron_rcm.atomic_output import atomic_write_bytes

# TorchInductor options added to the models' own (torch.compile(options=...))
OPTION_SETS = {
    "models": {},
    "coordinate_descent": {"coordinate_descent_tuning": True},
    "max_autotune_pointwise": {"max_autotune_pointwise": True},
    # how inductor tiles and splits reductions: what the backward forms' column sums (bias, scale,
    # shift gradients) depend on
    "tile_reductions": {"triton.tile_reductions": True},
    "prefer_nd_tiling": {"triton.prefer_nd_tiling": True},
    "no_mix_order_reduction": {"triton.mix_order_reduction": False},
    "no_split_reductions": {"split_reductions": False},
    "multi_kernel": {"triton.multi_kernel": 1},
}
# Wan2.1-1.3B: hidden 1536, FFN 8960, heads of 128; 480p x 81 frames is 32760 tokens
HIDDEN, FFN, HEAD_DIM = 1536, 8960, 128


def piece_inputs(name, tokens, batch, dtype, device):
    """(piece, its arguments) at the shapes a Wan block calls it with; batch is doubled by the caller
    for the tangent form."""
    import torch

    from megatron_rcm.models import elementwise as ew

    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, device=device, dtype=dt)

    x, vec = rnd(tokens, batch, HIDDEN), lambda: rnd(1, batch, HIDDEN, dt=torch.float32)
    cases = {
        "modulate": lambda: (ew.modulate, (x, vec(), vec(), 1e-6)),
        "layer_norm": lambda: (ew.layer_norm, (x, rnd(HIDDEN), rnd(HIDDEN), 1e-6)),
        "bias_gated_residual": lambda: (ew.bias_gated_residual, (x, rnd(tokens, batch, HIDDEN), rnd(HIDDEN), vec())),
        "bias_residual": lambda: (ew.bias_residual, (x, rnd(tokens, batch, HIDDEN), rnd(HIDDEN))),
        "bias_sum_squares": lambda: (ew.bias_sum_squares, (x, rnd(HIDDEN))),
        "bias_rms_normalise": lambda: (ew.bias_rms_normalise, (
            x, rnd(HIDDEN), rnd(tokens, batch, 1, dt=torch.float32).abs() * HIDDEN, rnd(HIDDEN), HIDDEN, 1e-6,
            HEAD_DIM, rnd(tokens, 1, 1, HEAD_DIM // 2, dt=torch.float32), rnd(tokens, 1, 1, HEAD_DIM // 2,
                                                                               dt=torch.float32))),
        "bias_gelu": lambda: (ew.bias_gelu, (rnd(tokens, batch, FFN), rnd(FFN))),
    }
    return cases[name]()


def form_call(piece, form, args):
    """(function, arguments) of one form: plain and tangent take the piece's arguments (tangent
    with every batch-sized tensor already stacked), backward one gradient per output first."""
    import torch

    if form == "backward":
        outputs = piece.plain(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return piece.backward, (*(torch.randn_like(o) for o in outputs), *args)
    return (piece.with_tangent if form == "tangent" else piece.plain), args


def _bytes(values):
    import torch

    if isinstance(values, torch.Tensor):
        return values.numel() * values.element_size()
    if isinstance(values, (tuple, list)):
        return sum(_bytes(v) for v in values)
    return 0


def _median_ms(fn, repeats):
    import torch

    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench(pieces, forms, option_sets, tokens, repeats):
    import torch

    from megatron_rcm.models.elementwise import Elementwise

    rows = []
    for option_name in option_sets:
        options = {**Elementwise.compile_options, **OPTION_SETS[option_name]}
        torch._dynamo.reset()
        for name in pieces:
            for form in forms:
                batch = 2 if form == "tangent" else 1
                piece, args = piece_inputs(name, tokens, batch, torch.bfloat16, "cuda")
                fn, call_args = form_call(piece, form, args)
                if form == "backward" and piece.backward_kernel is not None:
                    compiled = piece.backward_kernel
                else:
                    compiled = torch.compile(fn, options=options or None)
                first_s, ms, out = _timed(compiled, call_args, repeats)
                moved = _bytes(call_args) + _bytes(out)
                rows.append(dict(options=option_name, piece=name, form=form, first_call_s=first_s, ms=ms,
                                 gb_per_s=moved / ms / 1e6))
                print(f"{option_name:24s} {name:20s} {form:9s} {ms:8.3f} ms {moved / ms / 1e6:7.0f} GB/s "
                      f"first call {first_s:6.1f} s", flush=True)
    return rows


def _timed(fn, args, repeats):
    """(first call's seconds, median ms of a call, outputs) under no_grad."""
    import torch

    with torch.no_grad():
        start = time.perf_counter()
        out = fn(*args)
        torch.cuda.synchronize()
        first_s = time.perf_counter() - start
        for _ in range(3):
            fn(*args)
        return first_s, _median_ms(lambda: fn(*args), repeats), out


def sweep_gelu(launches, tokens, repeats):
    """Rows for the GELU backward at the FFN shape (bf16): compiled formula, then each launch."""
    import functools

    import torch

    from megatron_rcm.kernels import gelu
    from megatron_rcm.models.elementwise import Elementwise
    from megatron_rcm.testing import norm_relative_error

    piece, args = piece_inputs("bias_gelu", tokens, 1, torch.bfloat16, "cuda")
    fn, call_args = form_call(piece, "backward", args)
    reference = fn(*(a.double() for a in call_args))
    candidates = [(f"torch.compile, {name}", torch.compile(fn, options={**Elementwise.compile_options,
                                                                          **OPTION_SETS[name]} or None))
                  for name in ("models", "coordinate_descent")]
    candidates += [(f"kernel {launch}", functools.partial(gelu.bias_gelu_backward, exact=False,
                                                          launch=gelu.Launch(*launch))) for launch in launches]
    rows = []
    for name, candidate in candidates:
        torch._dynamo.reset()
        first_s, ms, out = _timed(candidate, call_args, repeats)
        errors = [norm_relative_error(o, r) for o, r in zip(out, reference)]
        rows.append(dict(candidate=name, ms=ms, first_call_s=first_s, error_y=errors[0], error_bias=errors[1],
                         gb_per_s=(_bytes(call_args) + _bytes(out)) / ms / 1e6))
        print(f"{name:40s} {ms:8.3f} ms first call {first_s:5.1f} s errors {errors[0]:.2e} {errors[1]:.2e}", flush=True)
    return rows


def gelu_table(rows):
    base = rows[0]["ms"]
    lines = ["| GELU backward | ms | GB/s | x torch.compile (models) | first call s | error of grad y / bias vs "
             "float64 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['candidate']} | {r['ms']:.3f} | {r['gb_per_s']:.0f} | {base / r['ms']:.2f} "
              f"| {r['first_call_s']:.1f} | {r['error_y']:.2e} / {r['error_bias']:.2e} |" for r in rows]
    return "\n".join(lines)


def table(rows):
    """Markdown: one row per piece and form, ms (GB/s) per option set, and each set's ratio to "models"."""
    sets = list(dict.fromkeys(r["options"] for r in rows))
    cells = {(r["piece"], r["form"], r["options"]): r for r in rows}
    lines = ["| piece | form | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
    for piece, form in dict.fromkeys((r["piece"], r["form"]) for r in rows):
        base = cells.get((piece, form, sets[0]))
        row = []
        for s in sets:
            r = cells.get((piece, form, s))
            ratio = f", {base['ms'] / r['ms']:.2f}x" if r and base and s != sets[0] else ""
            row.append(f"{r['ms']:.3f} ms ({r['gb_per_s']:.0f} GB/s{ratio})" if r else "-")
        lines.append(f"| {piece} | {form} | " + " | ".join(row) + " |")
    totals = {s: sum(r["ms"] for r in rows if r["options"] == s) for s in sets}
    first = {s: sum(r["first_call_s"] for r in rows if r["options"] == s) for s in sets}
    sums = (f"{totals[s]:.3f} ms, first calls {first[s]:.0f} s" for s in sets)
    lines.append("| **sum** | | " + " | ".join(sums) + " |")
    return "\n".join(lines)


def cpu_smoke():
    """Every piece and form runs eagerly at a tiny shape and gives finite numbers; the table of
    their host-timed calls (the timings mean nothing here)."""
    import torch

    rows = []
    for name in PIECES:
        for form in FORMS:
            piece, args = piece_inputs(name, 8, 2 if form == "tangent" else 1, torch.float32, "cpu")
            fn, call_args = form_call(piece, form, args)
            start = time.perf_counter()
            out = fn(*call_args)
            ms = (time.perf_counter() - start) * 1e3
            outs = out if isinstance(out, tuple) else (out,)
            if not all(torch.isfinite(o).all() for o in outs if isinstance(o, torch.Tensor)):
                raise AssertionError(f"{name} {form}: non-finite output")
            rows.append(dict(options="eager", piece=name, form=form, first_call_s=ms / 1e3, ms=ms,
                             gb_per_s=(_bytes(call_args) + _bytes(out)) / ms / 1e6))
    print(table(rows))


PIECES = ("modulate", "layer_norm", "bias_gated_residual", "bias_residual", "bias_sum_squares",
          "bias_rms_normalise", "bias_gelu")
FORMS = ("plain", "tangent", "backward")


def _gelu_launch(text):
    """argparse type: a launch shape of the GELU backward kernel (``gelu.Launch``'s fields), as four
    positive integers."""
    values = text.split(",")
    if len(values) != 4 or not all(v.isdigit() and int(v) > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give ROWS,COLS,ROWS_PER_PROGRAM,WARPS as four positive integers")
    rows, _, rows_per_program, _ = launch = tuple(map(int, values))
    if rows_per_program % rows:
        raise argparse.ArgumentTypeError(f"{text!r}: ROWS_PER_PROGRAM must be a multiple of ROWS")
    return launch


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=cli.positive_int, default=32760, help="tokens per sample (default: %(default)s)")
    p.add_argument("--pieces", type=names_of(PIECES, "pieces"), default=",".join(PIECES),
                   help="comma-separated pieces (default: all)")
    p.add_argument("--forms", type=names_of(FORMS, "forms"), default=",".join(FORMS),
                   help="comma-separated forms (default: all)")
    p.add_argument("--options", type=names_of(OPTION_SETS, "option sets"), default="models,coordinate_descent",
                   help=f"comma-separated option sets out of {list(OPTION_SETS)} (default: %(default)s)")
    p.add_argument("--repeats", type=cli.positive_int, default=20, help="timed calls per case (default: %(default)s)")
    p.add_argument("--json", type=output_file, help="also write the rows as JSON here (default: print only)")
    p.add_argument("--gelu-launches", nargs="+", type=_gelu_launch, metavar="ROWS,COLS,ROWS_PER_PROGRAM,WARPS",
                   help="time the GELU backward kernel at these launch shapes beside torch.compile of its formula, "
                        "instead of the pieces (default: the pieces)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="plumbing only: every piece and form eagerly at a tiny shape on CPU")
    return p


def main():
    args = build_parser().parse_args()
    if args.cpu_smoke:
        cpu_smoke()
        return
    import torch

    if not torch.cuda.is_available():
        cli.fail("bench_elementwise", "no CUDA device: the pieces are timed compiled on a GPU "
                 "(--cpu-smoke runs on CPU)")
    if args.gelu_launches:
        rows = sweep_gelu(args.gelu_launches, args.tokens, args.repeats)
        print(f"\n{torch.cuda.get_device_name()}, {args.tokens} tokens x {FFN}, bf16\n")
        print(gelu_table(rows))
    else:
        rows = bench(args.pieces.split(","), args.forms.split(","), args.options.split(","), args.tokens, args.repeats)
        print(f"\n{torch.cuda.get_device_name()}, {args.tokens} tokens, bf16\n")
        print(table(rows))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(rows, indent=1).encode())


if __name__ == "__main__":
    main()
