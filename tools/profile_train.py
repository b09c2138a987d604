"""Where the time of one rCM iteration goes: the real trainer under torch.profiler (GPU; --smoke on CPU).

    python tools/profile_train.py --work /tmp/bench                   # Wan 1.3B, 480p x 81, one GPU
    python tools/profile_train.py --work /tmp/bench -- --recompute-method block --recompute-num-layers 19
    python tools/profile_train.py --smoke                              # a tiny model on CPU: plumbing only

Runs examples/pretrain_rcm.py's trainer (``training.loop.train``) in this process with
tools/bench_train.py's setup (random-weight teacher, synthetic shards, student every 2nd iteration,
bf16, full recompute; flags after ``--`` go to the trainer) for --iters iterations and profiles
the last two, one student and one critic iteration, with torch.profiler.

Each piece of device work (CUDA kernels and copies; on CPU, the outermost operators of each
thread) is attributed to the innermost range of ``training.step`` / ``training.loop``
(``rcm/<network>/<jvp|grad|nograd>``, ``rcm/<network>/backward``, ``rcm/optimizer``, ``rcm/ema``,
``rcm/data``) around its launch on the launching thread; work launched from autograd's backward
thread, which has no ranges, goes to the range any thread has open at that moment: the backward's.
NCCL kernels count as communication wherever they are launched, and device time outside any work
as idle. Shares are of the iteration's wall time (the range ``rcm/iteration``, what the trainer's
log counts); where streams overlap, the overlap is subtracted once, so the rows add up to it.

Prints a markdown table per profiled iteration, its device time by kind of kernel (attention,
matrix products, compiled pointwise work, ...: ``KERNEL_CLASSES``), its device-idle gaps (by
size, and the largest with the work on either side; on CUDA, the host's work during the three
largest), the top kernels by device time, the seconds the trainer logged for every iteration (the
profiled ones run a little slower) and, on CUDA, torch.compile's counters and compile times: per
iteration the graphs it compiled and the seconds spent (the first iterations' compile cost), the
functions that took longest and why graphs were recompiled; ``--json`` writes the same as one object.
"""

import argparse
import bisect
import collections
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# torch and megatron are imported where they are used, so that a wrong flag is refused before they load
import bench_train  # noqa: E402
from bench_flags import output_file  # noqa: E402

from megatron_rcm import cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (key, row label, range-name prefixes); the first matching prefix of a range names its phase
PHASES = (
    ("teacher", "teacher forward with CFG", ("rcm/teacher/",)),
    ("student_jvp", "student JVP (sCM tangent)", ("rcm/student/jvp",)),
    ("student_train", "student forward + backward (sCM, DMD)", ("rcm/student/grad", "rcm/student/backward")),
    ("student_rollout", "student rollout steps without grad (DMD, critic)", ("rcm/student/nograd",)),
    ("fake_score", "fake-score passes (DMD direction, critic forward + backward)", ("rcm/fake_score/",)),
    ("optimizer", "optimizer step (zero, finalize grads, AdamW)", ("rcm/optimizer",)),
    ("ema", "EMA update", ("rcm/ema",)),
    ("data", "data loading and noise", ("rcm/data",)),
)
EXTRA_ROWS = (("communication", "communication (NCCL)"), ("other", "other (loss arithmetic between the calls)"),
              ("idle", "idle (device gaps)"), ("overlap", "overlapping streams (counted twice above)"))
ITERATION = "rcm/iteration"
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
MIN_ITERS = 4  # two warm iterations, then the two profiled
SMOKE = dict(preset="tiny-a", frames=5, height=32, width=32, text_len=8, iters=4,
             config=ROOT / "examples" / "configs" / "tiny_cpu.yaml")


def _phase(range_name):
    for key, _, prefixes in PHASES:
        if range_name.startswith(prefixes):
            return key
    return "other"


def _communication(name):
    return "nccl" in name.lower() or name.startswith(("c10d::", "gloo"))


# (key, row label, name fragments), first match wins: cuDNN's attention kernels also name wgmma,
# so attention comes before the matrix products. Matched on lower-case kernel names.
KERNEL_CLASSES = (
    ("attention_jvp", "attention forward + JVP (ours)", ("flash_jvp",)),
    ("attention", "attention (cuDNN, FlashAttention-4, flash; forward and backward)",
     ("fmha", "sdpa", "flash", "cudnn")),
    ("matmul", "matrix products (cuBLAS, CUTLASS)", ("gemm", "nvjet", "cutlass", "xmma", "wgmma", "sm90_", "sm80_")),
    ("compiled", "torch.compile's fused pointwise and norms (Triton)", ("triton_",)),
    ("optimizer_kernels", "multi-tensor kernels (optimizer, grad norm)", ("multi_tensor", "fused_adam",
                                                                              "fusedadam")),
    ("reduction", "reductions (aten)", ("reduce_kernel", "norm_kernel")),
    ("elementwise", "other pointwise kernels (aten)", ("elementwise", "cat", "index", "copy_kernel")),
    ("copy", "copies and memsets", ("memcpy", "memset")),
)


def kernel_class(name):
    """The KERNEL_CLASSES key of a device kernel's name; NCCL is communication, the rest other."""
    if _communication(name):
        return "communication"
    lower = name.lower()
    return next((key for key, _, fragments in KERNEL_CLASSES if any(f in lower for f in fragments)), "other")


class Ranges:
    """The trainer's ranges of one thread, innermost first at any moment (they nest)."""

    def __init__(self, events):
        self.events = sorted(events, key=lambda e: e["ts"])
        self.starts = [e["ts"] for e in self.events]

    def innermost(self, ts):
        for e in reversed(self.events[:bisect.bisect_right(self.starts, ts)]):
            if ts <= e["ts"] + e["dur"]:
                return e["name"]
        return None


def _device_work(events, cuda):
    """[(name, start, end, launching thread, launch time)] of the device's work, in µs."""
    if cuda:
        # the host side of each launch (runtime or driver API call) shares the kernel's correlation id
        launches = {e["args"]["correlation"]: e for e in events
                    if e.get("cat") not in (*DEVICE_CATEGORIES, "gpu_user_annotation")
                    and "correlation" in e.get("args", {})}
        work = []
        for e in events:
            if e.get("cat") in DEVICE_CATEGORIES:
                launch = launches.get(e.get("args", {}).get("correlation"), {})
                work.append((e["name"], e["ts"], e["ts"] + e["dur"], launch.get("tid"), launch.get("ts", e["ts"])))
        return work
    work, ends = [], {}
    for e in sorted((e for e in events if e.get("cat") == "cpu_op"), key=lambda e: (e["ts"], -e["dur"])):
        if e["ts"] >= ends.get(e["tid"], float("-inf")):  # outermost on its thread
            ends[e["tid"]] = e["ts"] + e["dur"]
            work.append((e["name"], e["ts"], e["ts"] + e["dur"], e["tid"], e["ts"]))
    return work


def _union(intervals):
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def breakdown(events, cuda):
    """Per profiled iteration: its window, phase times (µs) and per-kernel times, from trace events."""
    ranges = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("rcm/")]
    windows = sorted((e for e in ranges if e["name"] == ITERATION), key=lambda e: e["ts"])
    by_thread = collections.defaultdict(list)
    for e in ranges:
        if e["name"] != ITERATION:
            by_thread[e["tid"]].append(e)
    threads = {tid: Ranges(evs) for tid, evs in by_thread.items()}
    work = _device_work(events, cuda)
    host = [e for e in events if e.get("cat") in HOST_CATEGORIES] if cuda else []
    out = []
    for window in windows:
        begin, end = window["ts"], window["ts"] + window["dur"]
        phases = collections.Counter({key: 0.0 for key, _, _ in PHASES})
        classes = collections.Counter()
        kernels = collections.defaultdict(lambda: [0.0, 0, collections.Counter()])
        clipped = []
        for name, start, stop, tid, launch in work:
            start, stop = max(start, begin), min(stop, end)
            if stop <= start:
                continue
            label = threads[tid].innermost(launch) if tid in threads else None
            if label is None:  # autograd's thread: the range another thread has open
                candidates = [r.innermost(launch) for r in threads.values()]
                label = next((c for c in candidates if c is not None), None)
            phase = "communication" if _communication(name) else _phase(label or "")
            phases[phase] += stop - start
            classes[kernel_class(name)] += stop - start
            kernel = kernels[name]
            kernel[0] += stop - start
            kernel[1] += 1
            kernel[2][phase] += stop - start
            clipped.append((start, stop, name, phase))
        busy = _union([(start, stop) for start, stop, _, _ in clipped])
        phases["idle"] = (end - begin) - busy
        phases["overlap"] = -(sum(stop - start for start, stop, _, _ in clipped) - busy)
        found = gaps(clipped, begin, end)
        for gap in found["largest"][:HOST_GAPS]:
            gap["host"] = host_work(host, gap["start"], gap["start"] + gap["us"])
        out.append({"window_us": end - begin, "busy_us": busy, "phases_us": dict(phases), "kernels": kernels,
                    "classes_us": dict(classes), "gaps": found})
    return out


HOST_CATEGORIES = ("cpu_op", "cuda_runtime", "cuda_driver", "python_function", "user_annotation")
HOST_GAPS = 3  # the largest gaps whose host work is listed


def host_work(events, begin, end, top=8):
    """What the host ran while the device idled in [begin, end]: events that cover at least a quarter
    of it, innermost (shortest) first, as (name, ms, thread)."""
    span = end - begin
    covering = [e for e in events if min(e["ts"] + e["dur"], end) - max(e["ts"], begin) >= span / 4]
    return [(e["name"], _ms(e["dur"]), e["tid"]) for e in sorted(covering, key=lambda e: e["dur"])[:top]]


GAP_CLASSES_US = ((0, 10), (10, 100), (100, 1000), (1000, float("inf")))


def gaps(spans, begin, end, top=12):
    """The device's idle stretches in [begin, end] between work ``spans`` [(start, stop, name, phase)]:
    per size class (µs) their count and total, and the ``top`` largest with the work on either side
    and the phase of the work that ended each (where the host was late to launch it)."""
    found, last_stop, last_name = [], begin, "(iteration start)"
    for start, stop, name, phase in sorted(spans):
        if start > last_stop:
            found.append((start - last_stop, phase, last_name, name, last_stop))
        if stop > last_stop:
            last_stop, last_name = stop, name
    if end > last_stop:
        found.append((end - last_stop, "other", last_name, "(iteration end)", last_stop))
    classes = [{"from_us": low, "to_us": high, "count": sum(1 for g in found if low <= g[0] < high),
                "us": sum(g[0] for g in found if low <= g[0] < high)} for low, high in GAP_CLASSES_US]
    largest = [{"us": us, "phase": phase, "before": before, "after": after, "start": start}
               for us, phase, before, after, start in sorted(found, key=lambda g: -g[0])[:top]]
    return {"classes": classes, "largest": largest}


def profile_run(work, preset, frames, height, width, iters, text_len=bench_train.TEXT_LEN, num_layers=None,
                config=None, extra=()):
    """Train ``iters`` iterations in this process, profiling the last two; returns (trace events,
    log records, whether CUDA ran, compile report)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from megatron_rcm.planning import Workload
    from megatron_rcm.training.arguments import load_config
    from megatron_rcm.training.loop import train

    if iters < MIN_ITERS:
        raise SystemExit(f"profile_train: --iters must be at least {MIN_ITERS} (two warm iterations, then the two "
                         "profiled)")
    latent = Workload(preset, height, width, frames, num_layers=num_layers).latent_shape()
    teacher, data, negative = bench_train.prepare(work, preset, num_layers, latent, text_len)
    log = work / "profile-log.jsonl"
    log.unlink(missing_ok=True)
    config = load_config(bench_train.trainer_flags(teacher, data, negative, iters, log, config=config, extra=extra),
                         world_size=1)
    cuda = torch.cuda.is_available()
    trace = work / "profile-trace.json"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    ends = [time.time()]  # the trainer's start, then each iteration's end: which iteration compiled a graph

    def after_iteration(progress):
        ends.append(time.time())
        profiler.step()

    with profile(activities=activities, schedule=schedule(wait=iters - 3, warmup=1, active=2, repeat=1),
                 on_trace_ready=lambda p: p.export_chrome_trace(str(trace))) as profiler, \
            triton_compiles() as compiles:
        train(config, after_iteration=after_iteration)
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return events, records, cuda, _compile_report(ends, compiles)


def _compile_report(ends, compiles):
    """torch.compile's counters (graphs, cache hits and misses, recompiles), compile times and, from
    dynamo's per-graph metrics, ``compiled_graphs``; ``jit_kernels`` of the Triton compilations."""
    from torch._dynamo.utils import compile_times, counters, get_compilation_metrics

    wanted = ("graph", "cache", "recompile", "frames", "calls")
    summary = {group: {k: v for k, v in counts.items() if any(w in k for w in wanted)}
               for group, counts in counters.items()}
    return {"counters": {g: c for g, c in summary.items() if c}, "compile_times": compile_times(repr="str"),
            "graphs": compiled_graphs(get_compilation_metrics(), ends), "jit": jit_kernels(compiles, ends)}


@contextlib.contextmanager
def triton_compiles():
    """Yields the list of this process's Triton compilations while the block runs, each as (epoch
    seconds at its end, kernel name, seconds, cache hit): the project's own kernels, which compile on
    their first call, and those of inductor's that it compiled here rather than in its worker
    processes (before they are up). Stays empty where Triton has no compilation listener (before
    3.4) or on CPU."""
    found = []
    try:
        from triton import knobs
    except ImportError:
        knobs = None
    if knobs is None or not hasattr(knobs.compilation, "listener"):
        yield found
        return

    def listener(*, src, metadata, metadata_group, times, cache_hit):
        micros = times.ir_initialization + sum(us for _, us in times.lowering_stages) + times.store_results
        found.append((time.time(), metadata.get("name", "?"), micros / 1e6, cache_hit))

    previous, knobs.compilation.listener = knobs.compilation.listener, listener
    try:
        yield found
    finally:
        knobs.compilation.listener = previous


def jit_kernels(compiles, ends):
    """``triton_compiles``' list per iteration (as in ``compiled_graphs``) and per kernel name: the
    compilations, their seconds and the cache hits among them."""
    def row():
        return {"compiles": 0, "seconds": 0.0, "cache_hits": 0}

    per_iteration, per_kernel = collections.defaultdict(row), collections.defaultdict(row)
    for end, name, seconds, hit in compiles:
        for r in (per_iteration[bisect.bisect_right(ends, end)], per_kernel[name]):
            r["compiles"] += 1
            r["seconds"] += seconds
            r["cache_hits"] += bool(hit)
    return {"per_iteration": dict(sorted(per_iteration.items())),
            "per_kernel": dict(sorted(per_kernel.items(), key=lambda kv: -kv[1]["seconds"]))}


def compiled_graphs(metrics, ends):
    """Where torch.compile's time went, from dynamo's metrics (one per compiled graph; a backward
    graph is compiled at its first backward). ``ends``: the epoch seconds the trainer started, then
    each iteration's end. Per iteration (numbered from 1; 0 before the trainer started), and per compiled
    function (``file:line name``; backward graphs under their own row), the graphs compiled and their
    seconds: in all, in inductor, in Triton's compiler; and the reasons for recompiling, most
    frequent first."""
    def row():
        return {"graphs": 0, "seconds": 0.0, "inductor_seconds": 0.0, "triton_seconds": 0.0}

    def add(r, m):
        r["graphs"] += 1
        for key, field in (("seconds", "duration_us"), ("inductor_seconds", "inductor_cumulative_compile_time_us"),
                           ("triton_seconds", "triton_compile_time_us")):
            r[key] += (getattr(m, field, None) or 0) / 1e6

    per_iteration, per_function, reasons = collections.defaultdict(row), collections.defaultdict(row), \
        collections.Counter()
    for m in metrics:
        add(per_iteration[bisect.bisect_right(ends, m.start_time_us / 1e6)], m)
        add(per_function[f"{Path(m.co_filename).name}:{m.co_firstlineno} {m.co_name}" if m.co_name
                         else "(backward graphs)"], m)
        if m.recompile_reason:
            reasons[m.recompile_reason.split(": ", 1)[-1]] += 1
    return {"per_iteration": dict(sorted(per_iteration.items())),
            "per_function": dict(sorted(per_function.items(), key=lambda kv: -kv[1]["seconds"])),
            "recompile_reasons": reasons.most_common()}


def _ms(us):
    return us / 1000.0


def report(events, records, cuda, top=15):
    """The JSON-ready result: per profiled iteration its phases; the top kernels; the logged seconds."""
    import torch

    iterations = breakdown(events, cuda)
    profiled = records[-len(iterations):]
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "iterations": [],
              "logged_seconds": [(r["network"], r["seconds"]) for r in records]}
    totals = collections.defaultdict(lambda: [0.0, 0, collections.Counter()])
    for record, it in zip(profiled, iterations):
        window = it["window_us"]
        result["iterations"].append({
            "network": record["network"], "logged_seconds": record["seconds"], "profiled_ms": _ms(window),
            "busy_ms": _ms(it["busy_us"]),
            "phases": {key: {"ms": _ms(us), "share": us / window} for key, us in it["phases_us"].items()},
            "kernel_classes": {key: {"ms": _ms(us), "share": us / window}
                               for key, us in sorted(it["classes_us"].items(), key=lambda kv: -kv[1])},
            "gaps": it["gaps"]})
        for name, (us, calls, phases) in it["kernels"].items():
            totals[name][0] += us
            totals[name][1] += calls
            totals[name][2].update(phases)
    device_total = sum(us for us, _, _ in totals.values())
    result["top_kernels"] = [{"name": name, "ms": _ms(us), "calls": calls, "share": us / device_total,
                              "phase": phases.most_common(1)[0][0]}
                             for name, (us, calls, phases) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]]
    for network in ("student", "fake_score"):  # the first of each kind compiles: left out
        unprofiled = [s for n, s in result["logged_seconds"][:-len(iterations)] if n == network][1:]
        result[f"{network}_unprofiled_seconds"] = statistics.median(unprofiled) if unprofiled else None
    return result


def markdown(result):
    labels = {key: label for key, label, _ in PHASES} | dict(EXTRA_ROWS)
    lines = []
    for it in result["iterations"]:
        unprofiled = result[it["network"] + "_unprofiled_seconds"] or float("nan")
        lines += [f"{it['network']} iteration: {it['profiled_ms']:.1f} ms profiled (the log: "
                  f"{it['logged_seconds']:.3f} s; unprofiled median {unprofiled:.3f} s), "
                  f"device busy {it['busy_ms']:.1f} ms", "", "| phase | ms | share |", "|---|---|---|"]
        lines += [f"| {labels[key]} | {p['ms']:.1f} | {100 * p['share']:.1f}% |" for key, p in it["phases"].items()]
        lines += [f"| **iteration** | {sum(p['ms'] for p in it['phases'].values()):.1f} | "
                  f"{100 * sum(p['share'] for p in it['phases'].values()):.1f}% |", ""]
        lines += _class_lines(it["kernel_classes"])
        lines += _gap_lines(it["gaps"], labels)
    kind = "operator" if result["device"] == "cpu" else "kernel"
    lines += [f"top {len(result['top_kernels'])} {kind}s by device time (both iterations)", "",
              f"| {kind} | ms | calls | share | mostly in |", "|---|---|---|---|---|"]
    lines += [f"| `{k['name'][:90]}` | {k['ms']:.1f} | {k['calls']} | {100 * k['share']:.1f}% | {labels[k['phase']]} |"
              for k in result["top_kernels"]]
    return "\n".join(lines)


def compile_lines(graphs, logged_seconds, top=15):
    """Markdown tables of ``compiled_graphs``: per iteration beside its logged seconds, the ``top``
    functions by compile time, the reasons for recompiling."""
    def cells(r):
        return f"{r['graphs']} | {r['seconds']:.1f} | {r['inductor_seconds']:.1f} | {r['triton_seconds']:.1f}"

    lines = ["torch.compile's graphs by iteration (seconds of compiling; Triton's within inductor's, inductor's "
             "within all)", "", "| iteration | network | logged s | graphs | compile s | inductor s | Triton s |",
             "|---|---|---|---|---|---|---|"]
    for index, r in graphs["per_iteration"].items():
        network, seconds = _network(index, logged_seconds)
        logged = "" if seconds is None else f"{seconds:.2f}"
        lines.append(f"| {index} | {network} | {logged} | {cells(r)} |")
    lines += ["", f"the {top} functions that took longest to compile", "",
              "| function | graphs | compile s | inductor s | Triton s |", "|---|---|---|---|---|"]
    lines += [f"| `{name}` | {cells(r)} |" for name, r in list(graphs["per_function"].items())[:top]]
    lines += ["", "| recompiled because | graphs |", "|---|---|"]
    return lines + [f"| {reason[:150]} | {count} |" for reason, count in graphs["recompile_reasons"][:top]]


def jit_lines(jit, logged_seconds):
    """Markdown tables of ``jit_kernels``: per iteration, then per kernel."""
    def cells(r):
        return f"{r['compiles']} | {r['cache_hits']} | {r['seconds']:.1f}"

    lines = ["Triton kernels compiled in this process (the project's own, and inductor's where it did not use its "
             "workers; seconds in Triton's compiler)", "",
             "| iteration | network | compiles | cache hits | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {_network(i, logged_seconds)[0]} | {cells(r)} |" for i, r in jit["per_iteration"].items()]
    lines += ["", "| kernel | compiles | cache hits | seconds |", "|---|---|---|---|"]
    return lines + [f"| `{name[:80]}` | {cells(r)} |" for name, r in jit["per_kernel"].items()]


def _network(index, logged_seconds):
    """(network, logged seconds) of iteration ``index`` (from 1), or a placeholder outside them."""
    return (logged_seconds[index - 1] if 1 <= index <= len(logged_seconds)
            else ("(outside the iterations)", None))


def _class_lines(classes):
    labels = {key: label for key, label, _ in KERNEL_CLASSES} | {"communication": "communication (NCCL)",
                                                                 "other": "other kernels"}
    lines = ["device time by kind of kernel (shares of the iteration; streams that overlap count twice)", "",
             "| kind | ms | share |", "|---|---|---|"]
    return lines + [f"| {labels[key]} | {c['ms']:.1f} | {100 * c['share']:.1f}% |" for key, c in classes.items()] + [""]


def _gap_lines(found, labels):
    def size(c):
        return f"{c['from_us'] / 1000:g}-{c['to_us'] / 1000:g} ms".replace("-inf ms", " ms and longer")

    lines = ["device idle by gap size: " + "; ".join(
        f"{size(c)}: {c['count']} gaps, {_ms(c['us']):.1f} ms" for c in found["classes"]), "",
        "| gap ms | phase of the work that ended it | last work before | first work after |", "|---|---|---|---|"]
    lines += [f"| {_ms(g['us']):.2f} | {labels.get(g['phase'], g['phase'])} | `{g['before'][:60]}` | "
              f"`{g['after'][:60]}` |" for g in found["largest"]]
    for g in found["largest"]:
        if g.get("host"):
            lines += ["", f"host work during the {_ms(g['us']):.2f} ms gap (innermost first): " + "; ".join(
                f"`{name[:70]}` {ms:.2f} ms (thread {tid})" for name, ms, tid in g["host"])]
    return lines + [""]


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path,
                        help="folder for the teacher, shards, trace and log (default: a temporary folder)")
    bench_train.add_run_flags(parser)
    parser.add_argument("--iters", type=cli.positive_int, default=6,
                        help=f"trainer iterations, at least {MIN_ITERS}; the last two (one student, one critic) are "
                             "profiled (default: %(default)s)")
    parser.add_argument("--json", type=output_file,
                        help="also write the result as JSON to this file (default: print only)")
    parser.add_argument("--top", type=cli.positive_int, default=15,
                        help="how many rows the tables of the largest kernels, of the functions slowest to "
                             "compile and of the recompile reasons list (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="plumbing only: a tiny model (tiny-a, 5 frames of 32 x 32, 4 iterations, tiny_cpu.yaml) "
                             "in place of --preset, the size, --iters and --config; on CPU with TRITON_INTERPRET=1")
    parser.add_argument("extra", nargs="*", help="after --: flags for examples/pretrain_rcm.py (default: none)")
    return parser


def _setup(parser, args):
    """profile_run's model, video, iterations and YAML (the flags', or --smoke's), checked before any work."""
    setup = dict(preset=args.preset, num_layers=args.num_layers, frames=args.frames, height=args.height,
                 width=args.width, iters=args.iters, config=args.config)
    if args.smoke:
        setup.update(SMOKE)
    if setup["iters"] < MIN_ITERS:
        parser.error(f"--iters must be at least {MIN_ITERS} (two warm iterations, then the two profiled), "
                     f"not {setup['iters']}")
    bench_train.check_run(parser, setup["preset"], setup["num_layers"], setup["frames"], setup["height"],
                          setup["width"], setup["config"])
    return setup


def main():
    parser = build_parser()
    args = parser.parse_args()
    setup = _setup(parser, args)
    from megatron_rcm.training.arguments import ConfigError

    # a trainer flag after -- or a setup the trainer refuses (no GPU and no TRITON_INTERPRET): one line
    with tempfile.TemporaryDirectory() as scratch, cli.one_line_errors("profile_train", (ConfigError,)):
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        events, records, cuda, compiled = profile_run(work, extra=args.extra, **setup)
    result = report(events, records, cuda, args.top)
    result["compile"] = compiled
    print(markdown(result))
    print("\nseconds per iteration (the trainer's log):",
          ", ".join(f"{network} {seconds:.2f}" for network, seconds in result["logged_seconds"]))
    print("torch.compile counters:", json.dumps(compiled["counters"]))
    print(compiled["compile_times"])
    print("\n" + "\n".join(compile_lines(compiled["graphs"], result["logged_seconds"], args.top)))
    print("\n" + "\n".join(jit_lines(compiled["jit"], result["logged_seconds"])))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
