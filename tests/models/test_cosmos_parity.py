"""The Megatron Cosmos-Predict2 model equals diffusers' CosmosTransformer3DModel in float64:
forward, JVP, gradients, the padding-mask channel; the JVP also against central differences of diffusers."""

import pytest
import torch

from megatron_rcm.models.cosmos import CosmosModel, config_from_diffusers
from megatron_rcm.models.diffusers_float64 import float64_exact
from megatron_rcm.parallel import parallel_context

from .cosmos_oracle import config, diffusers_forward, diffusers_model, inputs, oracle, our_model, relative_error
from .oracle import check_serial

TOL = 1e-10
CASES = {
    # name: (preset, batch, latent [T, H, W], text length)
    "cosmos-tiny-a": ("cosmos-tiny-a", 2, (1, 4, 6), 5),  # an image (T = 1), as text-to-image runs it
    "cosmos-tiny-b": ("cosmos-tiny-b", 1, (4, 3, 2), 7),  # patch (2, 1, 1), no padding-mask channel
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_jvp_and_gradients_match_diffusers(case):
    check_serial("cosmos", *CASES[case], TOL)


def test_patch_of_three_axes_matches_diffusers():
    """Patch (2, 2, 2), padding-mask channel included: with a patch size of 1 along an axis (the
    presets'), a mix-up of that axis in the patch embedding's or proj_out's ("hwt") channel order
    changes nothing, here it does."""
    check_serial("cosmos", "cosmos-tiny-a", 1, (4, 4, 6), 3, TOL, patch_size=(2, 2, 2))


def test_padding_mask_channel_matches_diffusers():
    """A non-zero mask [1, 1, H, W] at the latent size (diffusers' nearest resize is then the identity)."""
    cfg = config("cosmos-tiny-a")
    reference = diffusers_model(cfg, seed=3)
    data = inputs(cfg, 2, (1, 4, 2), 3, seed=4)
    mask = (torch.rand(1, 1, 4, 2, generator=torch.Generator().manual_seed(5)) > 0.5).double()
    assert 0 < mask.sum() < mask.numel()
    expected = oracle(reference, data, padding_mask=mask)
    with parallel_context():
        model = our_model(cfg, reference)
        out_p, out_t = model.jvp(data["x"], data["t"], data["text"], data["x_t"], data["t_t"], padding_mask=mask)
        assert relative_error(model(data["x"], data["t"], data["text"], padding_mask=mask), expected["out"]) < TOL
        assert relative_error(out_t, expected["out_t"]) < TOL
        # the mask matters: without it the output differs
        assert relative_error(model(data["x"], data["t"], data["text"]), expected["out"]) > 1e-3


def test_jvp_matches_central_differences_of_diffusers():
    cfg = config("cosmos-tiny-b")
    reference = diffusers_model(cfg, seed=6)
    data = inputs(cfg, 2, (2, 2, 3), 4, seed=7)
    with parallel_context(), torch.no_grad():
        _, out_t = our_model(cfg, reference).jvp(data["x"], data["t"], data["text"], data["x_t"], data["t_t"])

    def difference(h):
        with float64_exact(), torch.no_grad():
            f = lambda s: diffusers_forward(reference, data["x"] + s * data["x_t"], data["t"] + s * data["t_t"],
                                            data["text"])
            return (f(h) - f(-h)) / (2 * h)

    # Richardson extrapolation of central differences: truncation error O(h^4) ~ 1e-12,
    # rounding ~ 1e-16 / h ~ 1e-13
    h = 1e-3
    fd = (4 * difference(h / 2) - difference(h)) / 3
    assert relative_error(out_t, fd) < 1e-9
    assert out_t.abs().max() > 1e-3


def test_config_round_trips_through_diffusers_config():
    from megatron_rcm.models.cosmos import cosmos_config, diffusers_config

    for preset in ("cosmos-predict2-2b", "cosmos-predict2-14b", "cosmos-tiny-a", "cosmos-tiny-b"):
        cfg = cosmos_config(preset, use_cpu_initialization=True)
        assert config_from_diffusers(diffusers_config(cfg)).architecture() == cfg.architecture()


def test_bad_inputs_and_configs_are_refused():
    cfg = config("cosmos-tiny-a")
    data = inputs(cfg, 1, (1, 4, 4), 3, seed=8)
    with parallel_context():
        model = CosmosModel(cfg)
        with pytest.raises(ValueError, match=r"padding_mask must be \[1 or 1, 1, 4, 4\]"):
            model(data["x"], data["t"], data["text"], padding_mask=torch.zeros(1, 1, 8, 8, dtype=torch.float64))
        with pytest.raises(ValueError, match="patches along height exceed"):
            big = torch.randn(1, cfg.in_channels, 1, 18, 4, dtype=torch.float64)
            model(big, data["t"], data["text"])
        no_mask = CosmosModel(config("cosmos-tiny-b"))
        x = torch.randn(1, 3, 2, 2, 2, dtype=torch.float64)
        with pytest.raises(ValueError, match="concat_padding_mask=False"):
            no_mask(x, data["t"], torch.randn(1, 3, 20, dtype=torch.float64),
                    padding_mask=torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="only Cosmos-Predict2 text-to-image"):
        config_from_diffusers({"extra_pos_embed_type": "learnable"})
    with pytest.raises(ValueError, match="not divisible by the tensor-parallel size"):
        config("cosmos-tiny-b", tensor_model_parallel_size=3)


def test_load_model_from_a_diffusers_folder(tmp_path):
    from megatron_rcm import load_model

    cfg = config("cosmos-tiny-a")
    reference = diffusers_model(cfg, seed=9)
    reference.save_pretrained(tmp_path)
    data = inputs(cfg, 1, (1, 2, 4), 3, seed=10)
    expected = oracle(reference, data)
    with parallel_context(), torch.no_grad():
        model = load_model(str(tmp_path), params_dtype=torch.float64)
        assert isinstance(model, CosmosModel)
        assert relative_error(model(data["x"], data["t"], data["text"]), expected["out"]) < TOL
        _, out_t = model.jvp(data["x"], data["t"], data["text"], data["x_t"], data["t_t"])
        assert relative_error(out_t, expected["out_t"]) < TOL


def test_compiled_elementwise_pieces_match_diffusers(monkeypatch):
    """The torch.compile'd forms (on CUDA by default) compiled here by inductor for the CPU: Cosmos'
    bias-free, exact-GELU and per-head RMSNorm + rotate-half RoPE pieces included, in float64."""
    from megatron_rcm.models import elementwise

    monkeypatch.setattr(elementwise.Elementwise, "compile_on", ("cuda", "cpu"))
    check_serial("cosmos", *CASES["cosmos-tiny-a"], TOL)
    # plain, tangent and backward forms all went through torch.compile, the two-output pieces' too
    for piece in (elementwise.head_rms_norm, elementwise.qk_head_rms_norm, elementwise.gated_residual_modulate):
        assert len(piece._compiled) == 3
