"""Benchmark a Megatron model (Wan by default) against its diffusers transformer (same config, same run).

One GPU:   python tools/bench_wan.py [--frames 81] [--layers 30] [--json out.json]
Any family's preset: --preset (tools/bench_cosmos.py runs this with Cosmos-Predict2 defaults)
TP=2:      torchrun --nproc-per-node 2 tools/bench_wan.py --tp 2 --sp
CP=2:      torchrun --nproc-per-node 2 tools/bench_wan.py --cp 2 --cp-mode a2a   (or --cp-mode p2p, ring)
CPU check: TRITON_INTERPRET=1 python tools/bench_wan.py --cpu-smoke

Random weights (a random diffusers model, loaded into ours), bf16, 480p (latent 60 x 104),
text length 512. Ours: forward, jvp, forward+backward with and without per-block recompute;
diffusers: forward, forward+backward with gradient checkpointing (and without, usually out
of memory). Also the bf16 error of our jvp (both halves) and of our no-grad forward against a
float32 run of our model, and of diffusers' forward against a float32 run of diffusers (the same weights and inputs).
Times are medians of CUDA-event timings after a warm-up; memory is the peak allocated during
the measurement. Only rank 0 prints; every rank runs diffusers on its own GPU.

--profile: torch.profiler over our forward, our jvp and diffusers' forward: the kernels that
take the most device time, kernels per call, and the device's busy time per call against the
call's wall time (busy well below wall: the host, launching kernels, sets the pace).
"""

import argparse
import json
import math
import statistics
import sys
import time

# tools/ is this script's directory. torch and megatron are imported where they are used, so that a
# wrong flag is refused before they load
from bench_flags import add_parallel_flags, check_parallel, output_file, preset_family, world_size
from megatron_rcm import cli

WAN_DEFAULTS = dict(preset="wan2.1-t2v-1.3b", smoke_preset="tiny-b", frames=81, height=480, width=832, text_len=512)


def build_parser(defaults=WAN_DEFAULTS, description=__doc__):
    p = cli.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(**defaults)
    p.add_argument("--preset", help="model preset of any family (default: %(default)s)")
    p.add_argument("--frames", type=cli.positive_int,
                   help="video frames (latent frames = (frames - 1) / 4 + 1) (default: %(default)s)")
    p.add_argument("--height", type=cli.positive_int,
                   help="video height in pixels (latent: / 8) (default: %(default)s)")
    p.add_argument("--width", type=cli.positive_int, help="video width in pixels (latent: / 8) (default: %(default)s)")
    p.add_argument("--layers", type=cli.positive_int, default=None,
                   help="fewer blocks for quick runs (default: the preset's)")
    p.add_argument("--text-len", type=cli.positive_int, help="text-embedding tokens (default: %(default)s)")
    add_parallel_flags(p)
    p.add_argument("--sp", action="store_true", help="sequence parallelism (needs --tp > 1)")
    p.add_argument("--repeats", type=cli.positive_int, default=3,
                   help="timed calls of each measurement after the warm-up, their median reported "
                        "(default: %(default)s)")
    p.add_argument("--skip-diffusers", action="store_true", help="time our model only")
    p.add_argument("--skip-error", action="store_true", help="skip the bf16-vs-float32 error runs")
    p.add_argument("--no-fuse-elementwise", action="store_true", help="run the elementwise pieces eagerly")
    p.add_argument("--profile", action="store_true", help="top kernels and device busy time of each forward and the jvp")
    p.add_argument("--json", type=output_file, default=None, help="write the results here (default: print only)")
    p.add_argument("--cpu-smoke", "--smoke", action="store_true", help="tiny model on CPU (needs TRITON_INTERPRET=1)")
    return p


def _parse(defaults, description):
    parser = build_parser(defaults, description)
    args = parser.parse_args()
    check_parallel(parser, args, world_size(), "torchrun --nproc-per-node", args.sp and "--sp")
    if args.cpu_smoke:
        args.preset, args.height, args.width, args.text_len, args.repeats = args.smoke_preset, 32, 48, 8, 1
        args.frames = min(args.frames, 5)
    _check_patches(parser, args)
    return args


def _latent(args):
    """(frames, height, width) of the latent video: the Wan VAE's 4x in time (first frame kept), 8x in space."""
    return (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8


def _check_patches(parser, args):
    """One line for an unknown preset, or a latent video that does not divide into the model's patches."""
    patch_size = preset_family(parser, args.preset).config_class.PRESETS[args.preset]["patch_size"]
    sizes = (("--frames", args.frames), ("--height", args.height), ("--width", args.width))
    for (flag, value), latent, patch in zip(sizes, _latent(args), patch_size):
        if latent % patch:
            parser.error(f"{flag} {value} gives {latent} latent steps, not a multiple of {args.preset}'s patch "
                         f"size {patch}")


class Timer:
    def __init__(self, device, repeats):
        self.device, self.repeats = device, repeats

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def __call__(self, fn):
        """(median seconds, peak GiB) of fn(), or ('OOM', None)."""
        import torch

        try:
            fn()
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(self.repeats):
                self._sync()
                start = time.perf_counter()
                fn()
                self._sync()
                times.append(time.perf_counter() - start)
        except torch.OutOfMemoryError:
            return "OOM", None
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None
        return statistics.median(times), peak


def _profile(fn, device, calls=3, top=12):
    """torch.profiler over ``calls`` calls of fn() after a warm-up: device busy ms and kernels per
    call, and the ``top`` kernels by device time (CPU ops on a CPU run)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.type == "cuda"
    fn()
    if on_cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])) as prof:
        for _ in range(calls):
            fn()
        if on_cuda:
            torch.cuda.synchronize()
    if on_cuda:
        # kernels, copies and memsets; not the annotations that span them (record_function ranges)
        events = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
        busy = lambda e: e.self_device_time_total
    else:
        events = [e for e in prof.key_averages() if e.device_type == DeviceType.CPU and e.key.startswith("aten::")]
        busy = lambda e: e.self_cpu_time_total
    events.sort(key=busy, reverse=True)
    return dict(busy_ms_per_call=sum(map(busy, events)) / calls / 1e3, what="kernels" if on_cuda else "CPU aten ops",
                kernels_per_call=sum(e.count for e in events) / calls,
                top=[dict(name=e.key, ms_per_call=busy(e) / calls / 1e3, count_per_call=e.count / calls)
                     for e in events[:top]])


def _diffusers_model(family, cfg, device, dtype):
    import diffusers

    kwargs = family.diffusers_config(cfg)
    return getattr(diffusers, kwargs.pop("_class_name"))(**kwargs).to(device=device, dtype=dtype)


def main(defaults=WAN_DEFAULTS, description=__doc__):
    args = _parse(defaults, description)
    import torch

    from megatron_rcm.models import family_of_preset
    from megatron_rcm.models.weight_map import load_diffusers_weights
    from megatron_rcm.parallel import ParallelConfig, current_device, initialize_parallel, destroy_parallel
    from megatron_rcm.planning import wan_forward_flops
    from megatron_rcm.testing import norm_relative_error

    family = family_of_preset(args.preset)
    initialize_parallel(ParallelConfig(tensor_model_parallel_size=args.tp, context_parallel_size=args.cp,
                                       sequence_parallel=args.sp))
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    device = current_device()
    dtype = torch.bfloat16
    overrides = dict(tensor_model_parallel_size=args.tp, context_parallel_size=args.cp, sequence_parallel=args.sp,
                     cp_comm_type=args.cp_mode, use_cpu_initialization=device.type == "cpu",
                     fuse_elementwise=not args.no_fuse_elementwise)
    if args.layers is not None:
        overrides["num_layers"] = args.layers
    cfg = family.config_class.from_preset(args.preset, params_dtype=dtype, bf16=True, **overrides)
    latent = _latent(args)
    tokens = math.prod(s // p for s, p in zip(latent, cfg.patch_size))

    torch.manual_seed(0)  # the same random weights and inputs on every rank
    reference = _diffusers_model(family, cfg, device, dtype)
    ours = load_diffusers_weights(family.model_class(cfg), reference)
    x = torch.randn(1, cfg.in_channels, *latent, device=device, dtype=dtype)
    t = torch.tensor([0.7 * ours.TIMESTEP_SCALE], device=device)  # RF time 0.7
    text = torch.randn(1, args.text_len, cfg.text_dim, device=device, dtype=dtype)
    x_t, t_t = torch.randn_like(x), torch.tensor([1.0], device=device)
    timer = Timer(device, args.repeats)
    flops = wan_forward_flops(cfg, tokens, args.text_len)
    rows, profiles = [], {}

    def record(model, what, result, flop=None):
        seconds, peak = result
        tflops = flop / seconds / 1e12 / (args.tp * args.cp) if flop and seconds != "OOM" else None
        rows.append(dict(model=model, measurement=what, seconds=seconds, peak_gib=peak, tflops_per_gpu=tflops))
        if rank0:
            print(f"{model} {what}: {seconds} s, peak {peak} GiB", flush=True)

    def train_step(model, call):
        model.zero_grad(set_to_none=True)
        call().float().square().mean().backward()

    def set_recompute(on):
        cfg.recompute_granularity, cfg.recompute_method, cfg.recompute_num_layers = (
            ("full", "uniform", 1) if on else (None, None, None))

    with torch.no_grad():
        record("ours", "forward", timer(lambda: ours(x, t, text)), flops)
        record("ours", "jvp", timer(lambda: ours.jvp(x, t, text, x_t, t_t)))
        if args.profile:
            profiles["ours forward"] = _profile(lambda: ours(x, t, text), device)
            profiles["ours jvp"] = _profile(lambda: ours.jvp(x, t, text, x_t, t_t), device)
    if x.is_cuda:
        from megatron_rcm.kernels import flash_jvp

        if flash_jvp._hopper_kernel_serves(
                *(torch.empty(1, 1, 64, cfg.head_dim, dtype=x.dtype, device=x.device) for _ in range(6)), None):
            print(f"attention JVP kernel: the Gluon kernel for Hopper, per (key tangents, short keys) "
                  f"{flash_jvp.flash_jvp_hopper.CONFIGS}, for calls without a key mask of more than "
                  f"{flash_jvp.PINNED_MAX_KEYS} keys; the Triton kernel at {flash_jvp.PINNED_CONFIGS} "
                  f"per (key tangents, at most 256 keys) up to that", flush=True)
        from megatron_rcm.kernels import fa4

        probe = torch.empty(1, 1, fa4.MIN_KEYS, cfg.head_dim, dtype=x.dtype, device=x.device)
        print(f"plain attention: {'FlashAttention-4' if fa4.serves(probe, probe, None) else 'SDPA'} for "
              f"{fa4.MIN_KEYS} keys or more, SDPA for fewer", flush=True)
        # what autotuning picked for calls the Triton kernel served, per (head dim, mask, size class, dtypes) key
        for key, config in flash_jvp._flash_jvp_tuned.cache.items():
            print(f"attention JVP kernel, tuned for {key}: {config}", flush=True)
    set_recompute(False)
    record("ours", "forward+backward", timer(lambda: train_step(ours, lambda: ours(x, t, text))), 3 * flops)
    set_recompute(True)
    record("ours", "forward+backward, recompute", timer(lambda: train_step(ours, lambda: ours(x, t, text))),
           3 * flops)
    set_recompute(False)

    errors = {}
    if not args.skip_diffusers:
        call = lambda: family.diffusers_forward(reference, x, t, text)
        with torch.no_grad():
            record("diffusers", "forward", timer(call), flops)
            if args.profile:
                profiles["diffusers forward"] = _profile(call, device)
        reference.enable_gradient_checkpointing()
        record("diffusers", "forward+backward, checkpointing", timer(lambda: train_step(reference, call)), 3 * flops)
        reference.disable_gradient_checkpointing()
        record("diffusers", "forward+backward", timer(lambda: train_step(reference, call)), 3 * flops)
        if not args.skip_error:
            # diffusers' own rounding, defined as ours below: bf16 against float32 of the same weights
            reference.zero_grad(set_to_none=True)
            with torch.no_grad():
                out = call()
                reference.float()
                ref = family.diffusers_forward(reference, x.float(), t, text.float())
            errors["diffusers_forward_bf16_vs_fp32"] = norm_relative_error(out, ref)
            del out, ref
    del reference

    if not args.skip_error:
        with torch.no_grad():
            out, out_t = ours.jvp(x, t, text, x_t, t_t)
            # the forward a frozen or no-grad call runs: separate from the JVP's primal half, as
            # its FFN has the bias and GELU in the GEMM's epilogue
            no_grad_out = ours(x, t, text)
            ours.float()
            timed_fused, cfg.fuse_elementwise = cfg.fuse_elementwise, False  # no float32 recompile
            start = time.perf_counter()
            ref, ref_t = ours.jvp(x.float(), t, text.float(), x_t.float(), t_t)
            if rank0:
                print(f"float32 reference jvp: {time.perf_counter() - start:.1f} s", flush=True)
            cfg.fuse_elementwise = timed_fused
        errors.update(forward_bf16_vs_fp32=norm_relative_error(out, ref), jvp_bf16_vs_fp32=norm_relative_error(out_t, ref_t),
                      no_grad_forward_bf16_vs_fp32=norm_relative_error(no_grad_out, ref))

    if rank0:
        result = dict(family=cfg.FAMILY, preset=args.preset, layers=cfg.num_layers, latent=latent, tokens=tokens, text_len=args.text_len,
                      tp=args.tp, cp=args.cp, cp_mode=args.cp_mode, sp=args.sp, fused=cfg.fuse_elementwise, device=str(
                          torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
                      rows=rows, errors=errors, profiles=profiles)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        print(_markdown(result))
    destroy_parallel()


def _markdown(result):
    fmt = lambda v, spec: "-" if v is None else (v if isinstance(v, str) else format(v, spec))
    forward = {r["model"]: r["seconds"] for r in result["rows"] if r["measurement"] == "forward"}
    lines = [f"{result['family']} {result['preset']} x {result['layers']} layers, latent {result['latent']} = {result['tokens']} "
             f"tokens, text {result['text_len']}, TP={result['tp']} CP={result['cp']} ({result['cp_mode']}) "
             f"SP={result['sp']}, fused elementwise={result['fused']}, {result['device']}, bf16",
             "",
             "| model | measurement | time (s) | x own forward | peak (GiB) | model TFLOP/s per GPU |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        base = forward.get(r["model"])
        ratio = r["seconds"] / base if isinstance(r["seconds"], float) and isinstance(base, float) else None
        lines.append(f"| {r['model']} | {r['measurement']} | {fmt(r['seconds'], '.3f')} | {fmt(ratio, '.2f')} | "
                     f"{fmt(r['peak_gib'], '.1f')} | {fmt(r['tflops_per_gpu'], '.0f')} |")
    for name, value in result["errors"].items():
        lines.append(f"\n{name} (relative L2): {value:.2e}")
    for name, profile in result["profiles"].items():
        seconds = next(r["seconds"] for r in result["rows"] if f"{r['model']} {r['measurement']}" == name)
        wall = f" of {seconds * 1e3:.1f} ms wall" if isinstance(seconds, float) else ""
        lines += [f"\nProfile, {name}: device busy {profile['busy_ms_per_call']:.1f} ms{wall} per call, "
                  f"{profile['kernels_per_call']:.0f} {profile['what']} per call", "",
                  "| kernel | ms per call | calls per call |", "|---|---|---|"]
        lines += [f"| {k['name'][:100]} | {k['ms_per_call']:.3f} | {k['count_per_call']:.0f} |" for k in profile["top"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
