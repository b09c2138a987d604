"""The Megatron Wan model equals diffusers' WanTransformer3DModel in float64: forward, JVP, gradients."""

import pytest
import torch

from megatron_rcm import load_model
from megatron_rcm.models.wan import wan_config
from megatron_rcm.parallel import parallel_context

from .oracle import check_serial
from .wan_oracle import config, diffusers_model, inputs, our_model, oracle, relative_error

TOL = 1e-10
CASES = {
    # name: (preset, batch, latent [T, H, W], text length)
    "tiny-a": ("tiny-a", 2, (3, 4, 6), 5),
    "tiny-b": ("tiny-b", 1, (4, 3, 2), 7),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_jvp_and_gradients_match_diffusers(case):
    _check_against_diffusers(case)


def test_compiled_elementwise_pieces_match_diffusers(monkeypatch):
    """The torch.compile'd forms (on CUDA by default) compiled here by inductor for the CPU: graph
    capture of every form, the autograd.Function with its compiled backward, in float64."""
    from megatron_rcm.models import elementwise

    monkeypatch.setattr(elementwise.Elementwise, "compile_on", ("cuda", "cpu"))
    _check_against_diffusers("tiny-a")
    # plain, tangent and backward forms all went through torch.compile
    assert len(elementwise.modulate._compiled) == 3


def _check_against_diffusers(case):
    check_serial("wan", *CASES[case], TOL)


def test_patch_of_three_axes_matches_diffusers():
    """Patch (2, 2, 2): with a patch size of 1 along an axis (the presets'), a mix-up of that axis with
    another in the patch embedding's or proj_out's channel order changes nothing, here it does."""
    check_serial("wan", "tiny-b", 1, (4, 4, 6), 3, TOL, patch_size=(2, 2, 2))


def test_config_from_and_to_diffusers_agree_with_diffusers():
    """``config_from_diffusers`` reads the config diffusers writes for a model built from explicit
    arguments, and every entry of ``diffusers_config`` is what diffusers holds for that model; tiny-b
    has a non-default eps, freq_dim and cross_attn_norm. Every preset round-trips."""
    from megatron_rcm.models.wan import config_from_diffusers, diffusers_config

    for preset in ("tiny-a", "tiny-b"):
        cfg = config(preset)
        theirs = dict(diffusers_model(cfg, seed=7).config)
        assert config_from_diffusers(theirs).architecture() == cfg.architecture()
        ours = diffusers_config(cfg)
        normalise = lambda v: list(v) if isinstance(v, (tuple, list)) else v
        assert {k: normalise(v) for k, v in ours.items() if not k.startswith("_")} == \
            {k: normalise(theirs[k]) for k in ours if not k.startswith("_")}
    for preset in ("tiny-a", "tiny-b", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"):
        cfg = wan_config(preset, use_cpu_initialization=True)
        assert config_from_diffusers(diffusers_config(cfg)).architecture() == cfg.architecture()


def test_jvp_matches_finite_differences_of_our_forward():
    cfg = config("tiny-b")
    data = inputs(cfg, 2, (2, 2, 3), 4, seed=3)
    # sin/cos of t have frequencies up to 1 per unit of t: keep the t step small next to that
    data["t_t"] = data["t_t"] / 100
    with parallel_context(), torch.no_grad():
        model = our_model(cfg, diffusers_model(cfg, seed=4))
        _, out_t = model.jvp(data["x"], data["t"], data["text"], data["x_t"], data["t_t"])

        def difference(h):
            f = lambda s: model(data["x"] + s * data["x_t"], data["t"] + s * data["t_t"], data["text"])
            return (f(h) - f(-h)) / (2 * h)

        # Richardson extrapolation of central differences: truncation error O(h^4) ~ 1e-12,
        # rounding ~ 1e-16 / h ~ 1e-13
        h = 1e-3
        fd = (4 * difference(h / 2) - difference(h)) / 3
        assert relative_error(out_t, fd) < 1e-9
        assert out_t.abs().max() > 1e-3


def test_load_model_from_a_diffusers_folder(tmp_path):
    cfg = config("tiny-a")
    reference = diffusers_model(cfg, seed=5)
    reference.save_pretrained(tmp_path)
    data = inputs(cfg, 1, (2, 2, 4), 3, seed=6)
    expected = oracle(reference, data)["out"]
    with parallel_context(), torch.no_grad():
        model = load_model(str(tmp_path), params_dtype=torch.float64)
        assert relative_error(model(data["x"], data["t"], data["text"]), expected) < TOL
