"""``--verify``: build the model on each side of a conversion in float64, run both on one random input.

diffusers and Wan native checkpoints run as the family's diffusers transformer (in exact float64,
``diffusers_float64``, called as the family's pipeline calls it); a Megatron checkpoint runs as the
family's model loaded by ``load_model``. The result is max |a - b| / max |a| of the two outputs: 0
where both sides are the same network with the same bits, ~1e-15..1e-12 for diffusers against
Megatron (different kernels, float64). ``layers`` keeps only the first blocks of both models, so
that a 14B checkpoint verifies on a CPU.
"""

import torch

from ..loading import load_model
from ..models import family_of_diffusers_config
from ..models.diffusers_float64 import DTYPE, float64_exact
from ..parallel import parallel_context
from .api import open_checkpoint


def _diffusers_model(tensors, layers):
    import diffusers

    family = family_of_diffusers_config(tensors.config)
    cfg = dict(tensors.config, num_layers=layers or tensors.config["num_layers"])
    with float64_exact():
        model = getattr(diffusers, family.diffusers_class).from_config(cfg)
        # torch's Module.to: diffusers' own warns that some modules should stay float32, all are float64 here
        model = torch.nn.Module.to(model, DTYPE)
    state = {key: tensors.get(key).to(DTYPE) for key in model.state_dict()}
    model.load_state_dict(state, strict=True)
    return lambda x, t, text: family.diffusers_forward(model, x, t, text)


def _model(fmt, path, layers, megatron_prefix):
    tensors = open_checkpoint(fmt, path, megatron_prefix)
    if fmt == "megatron":
        overrides = {"num_layers": layers} if layers else {}
        return load_model(str(path), model_prefix=megatron_prefix, params_dtype=DTYPE, **overrides), tensors.config
    return _diffusers_model(tensors, layers), tensors.config


@torch.no_grad()
def verify_conversion(source, input_path, target, output_path, layers=None, megatron_prefix=None, seed=0):
    """Max relative difference of the two models' outputs on one random float64 input."""
    with parallel_context():
        before, cfg = _model(source, input_path, layers, megatron_prefix if source == "megatron" else None)
        after, _ = _model(target, output_path, layers, None)
        family = family_of_diffusers_config(cfg)
        config = family.config_from_diffusers(cfg, use_cpu_initialization=True)
        g = torch.Generator().manual_seed(seed)
        latent = [2 * p for p in config.patch_size]
        x = torch.randn(1, config.in_channels, *latent, generator=g, dtype=DTYPE)
        t = torch.rand(1, generator=g, dtype=DTYPE) * family.model_class.TIMESTEP_SCALE
        text = torch.randn(1, 7, config.text_dim, generator=g, dtype=DTYPE)
        with float64_exact():
            a, b = before(x, t, text), after(x, t, text)
    return float((a - b).abs().max() / a.abs().max())
