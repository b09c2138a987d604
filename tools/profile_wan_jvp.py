"""Two Wan-1.3B layers at 480p x 81 frames (32760 tokens), bf16, one GPU: forward and jvp times with
the elementwise pieces fused (torch.compile) and eager, then CUDA profiles of the fused jvp and forward.

    python3 tools/profile_wan_jvp.py
"""
import time
import torch
from torch.profiler import profile, ProfilerActivity
from megatron_rcm.models.wan import WanModel, wan_config
from megatron_rcm.parallel import ParallelConfig, initialize_parallel
initialize_parallel(ParallelConfig())
dtype = torch.bfloat16
cfg = wan_config("wan2.1-t2v-1.3b", params_dtype=dtype, bf16=True, num_layers=2)
m = WanModel(cfg).cuda()
x = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=dtype)
t = torch.tensor([700.0], device="cuda")
text = torch.randn(1, 512, 4096, device="cuda", dtype=dtype)
xt, tt = torch.randn_like(x), torch.tensor([1.0], device="cuda")
calls = (("jvp", lambda: m.jvp(x, t, text, xt, tt)), ("forward", lambda: m(x, t, text)))

def ms(fn, n=5):
    """Mean milliseconds of n calls after one warm-up."""
    fn(); torch.cuda.synchronize(); s = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - s) / n * 1e3

with torch.no_grad():
    for fused in (True, False):
        cfg.fuse_elementwise = fused
        c = time.perf_counter(); calls[0][1](); calls[1][1](); torch.cuda.synchronize()
        print(f"fused={fused}: first calls {time.perf_counter() - c:.1f} s; " +
              ", ".join(f"{name} {ms(fn):.1f} ms" for name, fn in calls), flush=True)
    cfg.fuse_elementwise = True
    for name, fn in calls:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(); torch.cuda.synchronize()
        print("=====", name)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
