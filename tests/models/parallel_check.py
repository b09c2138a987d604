"""One model-family-independent check on gloo: a TP / SP / CP layout equals the float64 diffusers oracle.

``check_layout`` runs on every rank (``run_distributed``): it builds the family's model in the
layout inside megatron's DDP, and compares the forward, the JVP, the input gradient, every parameter
gradient after megatron's own reductions (DDP's over the CP group, ``finalize_model_grads``' TP sum
of sequence-parallel parameters and q/k layernorm weights) and the gradient norm megatron's
optimizers take with the oracle's.
"""

import functools
import importlib

import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.testing import run_distributed

from .oracle import family_oracle, relative_error

TOL = 1e-10
BATCH, TEXT_LEN = 2, 3


@functools.lru_cache(maxsize=None)
def _reference(family, preset, latent):
    oracle = family_oracle(family)
    cfg = oracle.config(preset)
    model = oracle.diffusers_model(cfg, seed=11)
    data = oracle.inputs(cfg, BATCH, latent, TEXT_LEN, seed=12)
    return model.state_dict(), data, oracle.oracle(model, data)


def case_id(tp, cp, sp, mode, recompute, padded):
    recompute_id = {False: "", True: "-recompute", "keep attention": "-recompute-keep-attention"}[recompute]
    return f"tp{tp}-cp{cp}-{'sp' if sp else 'nosp'}-{mode}{recompute_id}-" + ("padded" if padded else "even")


def check_parallel_equals_serial(family, preset, latent, tp, cp, sp, mode, recompute):
    """Run ``check_layout`` on tp x cp gloo ranks against the serial oracle of ``latent``."""
    state, data, expected = _reference(family, preset, latent)
    checked = run_distributed(check_layout, world_size=tp * cp,
                              args=(family, preset, tp, cp, sp, mode, recompute, state, data, expected))
    assert all(n > 40 for n in checked)


def _reduced_grads(ddp, model, cp):
    """Every parameter's gradient as the trainer's optimizer takes it: megatron's DDP averages over
    the data- and context-parallel ranks, and ``finalize_model_grads`` sums the sequence-parallel and
    q/k norm weights over TP. The CP ranks hold partial sums of one loss's gradient, so the trainer
    scales its loss by the CP size (``training.step``); the gradients are scaled here instead, so
    that the input's gradient stays the loss's own."""
    finalize_model_grads([ddp])
    return {name: p.main_grad * cp for name, p in model.named_parameters()}


def _grad_norm_error(model, grads, expected_grads):
    """Relative error of the gradient norm as megatron's optimizers take it (each parameter counted on
    the TP ranks that ``param_is_not_tensor_parallel_duplicate`` names, summed over the TP group)
    against the oracle's: a TP-split parameter that megatron takes for a replicated one is counted
    on one rank only."""
    params = dict(model.named_parameters())
    squares = sum(g.double().pow(2).sum() for name, g in grads.items()
                  if param_is_not_tensor_parallel_duplicate(params[name]))
    dist.all_reduce(squares, group=parallel_state.get_tensor_model_parallel_group())
    want = sum(g.double().pow(2).sum() for g in expected_grads.values()).sqrt()
    return (abs(squares.sqrt() - want) / want).item()


def check_layout(family, preset, tp, cp, sp, mode, recompute, state, data, expected):
    """Errors of one layout against the oracle (asserted below ``TOL``); returns how many were checked."""
    oracle = family_oracle(family)
    weights = importlib.import_module(f"megatron_rcm.models.{family}")
    with parallel_context(ParallelConfig(tensor_model_parallel_size=tp, context_parallel_size=cp,
                                         sequence_parallel=sp)):
        overrides = dict(tensor_model_parallel_size=tp, context_parallel_size=cp, sequence_parallel=sp,
                         cp_comm_type=mode)
        if recompute:
            overrides.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=2,
                             recompute_keep_attention=recompute == "keep attention")
        cfg = oracle.config(preset, **overrides)
        model = oracle.our_model(cfg, state)
        ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
        x = data["x"].clone().requires_grad_()
        out = model(x, data["t"], data["text"])
        (out * data["w"]).sum().backward()
        out_p, out_t = model.jvp(data["x"], data["t"], data["text"], data["x_t"], data["t_t"])
        errors = dict(out=relative_error(out, expected["out"]), jvp_primal=relative_error(out_p, expected["out"]),
                      jvp=relative_error(out_t, expected["out_t"]), x_grad=relative_error(x.grad, expected["x_grad"]))
        grads = _reduced_grads(ddp, model, cp)
        want = weights.convert_diffusers_state_dict(expected["grads"], cfg,
                                                    parallel_state.get_tensor_model_parallel_rank())
        assert want.keys() == grads.keys()
        errors.update({name: relative_error(grads[name], g) for name, g in want.items()})
        errors["grad_norm"] = _grad_norm_error(model, grads, expected["grads"])
        bad = {k: v for k, v in errors.items() if not v < TOL}
        assert not bad, bad
        return len(errors)
