"""Measure a Profile on the local GPU(s) at the width being planned (CUDA only).

A Wan model of the workload's preset with a few blocks runs at TP 1 on every GPU: forward, JVP,
forward+backward with full recompute and without (its peak memory gives the saved activations
per block). Under torchrun with several ranks, the all-gather, all-to-all and ring exchange of
one block's token stream are timed over all of them. The host copy and HBM rates are timed too.
Coefficients not measured here (inter-node bandwidth, per-iteration overhead) keep their defaults.
"""

import dataclasses
import statistics
import time

import torch
import torch.distributed as dist

from ..parallel import ParallelConfig, current_device, parallel_context
from .memory import BF16, FP32, activation_bytes
from .profile import DEFAULT_PROFILE, Profile
from .timing import wan_forward_flops
from .workload import Layout, PlanError, Workload

GB = 1e9


def _seconds(fn, repeats):
    """Median seconds of fn() after one warm-up call, and the peak bytes allocated above the start."""
    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() - base


def measured_matmul_tflops(n=8192, repeats=20) -> float:
    """Dense bf16 matmul rate of this GPU, TFLOP/s."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds, _ = _seconds(lambda: a @ b, repeats)
    return 2 * n**3 / seconds / 1e12


def _copy_rates(numel=2**28):
    """(host <-> GPU GB/s with pinned memory, effective HBM GB/s of an fp32 lerp)."""
    host = torch.empty(numel, dtype=torch.float32, pin_memory=True)
    device = torch.empty(numel, dtype=torch.float32, device="cuda")
    seconds, _ = _seconds(lambda: (device.copy_(host, non_blocking=True), host.copy_(device, non_blocking=True)), 3)
    host_gbs = 2 * numel * FP32 / seconds / GB
    other = torch.randn_like(device)
    seconds, _ = _seconds(lambda: device.lerp_(other, 0.1), 5)
    return host_gbs, 3 * numel * FP32 / seconds / GB  # lerp reads two tensors, writes one


def _model_rates(workload, layers, repeats, profile):
    """Forward efficiency, JVP and backward ratios, activation coefficients of one GPU."""
    from ..models.wan import WanModel

    config = workload.config(num_layers=layers, params_dtype=torch.bfloat16, bf16=True, use_cpu_initialization=False)
    model = WanModel(config)
    b, device = workload.micro_batch_size, current_device()
    x = torch.randn(b, config.in_channels, *workload.latent_shape(), device=device, dtype=torch.bfloat16)
    t = torch.rand(b, device=device) * 1000
    text = torch.randn(b, workload.text_len, config.text_dim, device=device, dtype=torch.bfloat16)
    x_t, t_t = torch.randn_like(x), torch.ones(b, device=device)

    def train():  # gradients freed after each call, so that the measured peaks include them
        model(x, t, text).float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    with torch.no_grad():
        forward, _ = _seconds(lambda: model(x, t, text), repeats)
        jvp, _ = _seconds(lambda: model.jvp(x, t, text, x_t, t_t), repeats)
    config.recompute_granularity, config.recompute_method, config.recompute_num_layers = "full", "uniform", 1
    recompute, recompute_peak = _seconds(train, repeats)
    config.recompute_granularity = config.recompute_method = config.recompute_num_layers = None
    tokens = workload.tokens(config)
    flops = wan_forward_flops(config, tokens, workload.text_len) * b
    rates = dict(forward_efficiency=flops / forward / (profile.matmul_tflops * 1e12), jvp_ratio=jvp / forward,
                 backward_ratio=recompute / forward - 2)
    try:
        _, plain_peak = _seconds(train, 1)
    except torch.OutOfMemoryError:
        return rates  # the saved activations of these blocks do not fit: keep the default coefficients
    predicted = activation_bytes(config, tokens, Layout(), profile, b)
    # at the last block's backward both peaks hold the gradients and that block's saved tensors and
    # temporaries; without recompute the other blocks' saved tensors too, with it their inputs
    saved = (plain_peak - recompute_peak + layers * predicted["checkpoint"]) / (layers - 1)
    scale = saved / predicted["saved"]
    grads = sum(p.numel() for p in model.parameters()) * BF16
    working = (recompute_peak - grads - layers * predicted["checkpoint"]) / saved
    return dict(rates, activation_outer_bytes=profile.activation_outer_bytes * scale,
                activation_inner_bytes=profile.activation_inner_bytes * scale,
                activation_ffn_bytes=profile.activation_ffn_bytes * scale, backward_working_factor=working)


def _collective_rates(workload, config, repeats):
    """Effective GB/s of the sequence-parallel all-gather, the all-to-all and the ring exchange over
    all ranks, each moving one block's token stream of the workload."""
    world = dist.get_world_size()
    rank = dist.get_rank()
    tokens = workload.tokens(config) * workload.micro_batch_size
    chunk = torch.randn(tokens // world, config.hidden_size, device=current_device(), dtype=torch.bfloat16)
    full = torch.empty(chunk.shape[0] * world, chunk.shape[1], device=chunk.device, dtype=chunk.dtype)
    moved = (world - 1) / world * full.numel() * BF16
    gather, _ = _seconds(lambda: dist.all_gather_into_tensor(full, chunk), repeats)
    out = torch.empty_like(chunk)
    a2a, _ = _seconds(lambda: dist.all_to_all_single(out, chunk), repeats)

    def ring():
        ops = [dist.P2POp(dist.isend, chunk, (rank + 1) % world), dist.P2POp(dist.irecv, out, (rank - 1) % world)]
        for request in dist.batch_isend_irecv(ops):
            request.wait()

    p2p, _ = _seconds(ring, repeats)
    return dict(tp_bandwidth_gbs=moved / gather / GB, cp_a2a_bandwidth_gbs=(world - 1) / world * chunk.numel() * BF16
                / a2a / GB, cp_p2p_bandwidth_gbs=chunk.numel() * BF16 / p2p / GB)


def calibrate(workload: Workload, layers: int = 2, repeats: int = 3) -> Profile:
    """The Profile of the local GPU(s) (run under torchrun to time collectives across GPUs)."""
    if not torch.cuda.is_available():
        raise PlanError("--calibrate needs CUDA GPUs; without them plan with the default profile or a --profile file")
    if layers < 2:
        raise PlanError("--calibration-layers must be at least 2 (the saved activations per block are a difference)")
    with parallel_context(ParallelConfig()):
        matmul = measured_matmul_tflops()
        profile = dataclasses.replace(DEFAULT_PROFILE, matmul_tflops=matmul,
                                      device=f"{torch.cuda.get_device_name()} x {dist.get_world_size()}, "
                                             f"calibrated at {workload.preset} width")
        host, hbm = _copy_rates()
        values = dict(host_bandwidth_gbs=host, hbm_bandwidth_gbs=hbm, **_model_rates(workload, layers, repeats, profile))
        if dist.get_world_size() > 1:
            values.update(_collective_rates(workload, workload.config(), repeats))
        return dataclasses.replace(profile, **values)
