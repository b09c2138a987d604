"""Conversion checks against oracles outside the converter's own tables: diffusers' own Wan key converter,
hand-derived native configs, and ``--verify`` fed outputs that differ from their inputs. Round trips alone
cannot catch a mapping that is wrong the same way in both directions."""

import json
import shutil

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from megatron_rcm.convert.api import convert_checkpoint
from megatron_rcm.convert.verify import verify_conversion
from megatron_rcm.convert.wan_native import ConfigMismatchError

from .checkpoints import leftovers, tensors

# in != out channels and freq_dim != text_dim != hidden, so that a swap of any two of them changes a shape
ASYMMETRIC = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=6,
                  text_dim=12, freq_dim=10, ffn_dim=24, num_layers=2)


def _save(folder, seed, **config):
    """A diffusers WanTransformer3DModel of ``config`` with every parameter drawn fresh, saved to ``folder``."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder)
    return folder


def test_native_output_is_what_diffusers_own_wan_converter_reads_back(tmp_path):
    """Every native tensor, renamed by diffusers' single-file Wan converter (an independent key table),
    is the diffusers tensor of that name: q/k/v/o, norm2/norm3, embedder indices are not mixed up."""
    folder = _save(tmp_path / "diffusers", 0, **ASYMMETRIC)
    convert_checkpoint("diffusers", "wan", folder, tmp_path / "wan", progress=False)
    original = tensors(folder)
    renamed = convert_wan_transformer_to_diffusers(dict(tensors(tmp_path / "wan")))
    assert renamed.keys() == original.keys()
    assert all(torch.equal(renamed[k], original[k]) for k in original), [
        k for k in original if not torch.equal(renamed[k], original[k])]
    # the same through a Megatron checkpoint (read back under diffusers names, written under native ones)
    convert_checkpoint("diffusers", "megatron", folder, tmp_path / "megatron", tensor_parallel_size=2, progress=False)
    convert_checkpoint("megatron", "wan", tmp_path / "megatron", tmp_path / "wan2", progress=False)
    renamed = convert_wan_transformer_to_diffusers(dict(tensors(tmp_path / "wan2")))
    assert renamed.keys() == original.keys() and all(torch.equal(renamed[k], original[k]) for k in original)


def test_native_config_has_wans_field_meanings(tmp_path):
    """The native config.json, field by field, from the diffusers config and from the native tensors' shapes
    (patch_embedding [dim, in_dim, *patch], head.head [out_dim * patch volume, dim], text_embedding.0
    [dim, text_dim], time_embedding.0 [dim, freq_dim]); converting it back gives the diffusers config."""
    folder = _save(tmp_path / "diffusers", 1, **ASYMMETRIC)
    convert_checkpoint("diffusers", "wan", folder, tmp_path / "wan", progress=False)
    native = json.loads((tmp_path / "wan" / "config.json").read_text())
    assert {k: native[k] for k in ("dim", "num_heads", "in_dim", "out_dim", "text_dim", "freq_dim", "ffn_dim",
                                   "num_layers", "patch_size", "cross_attn_norm", "model_type")} == dict(
        dim=16, num_heads=2, in_dim=4, out_dim=6, text_dim=12, freq_dim=10, ffn_dim=24, num_layers=2,
        patch_size=[1, 2, 2], cross_attn_norm=True, model_type="t2v")
    weights = tensors(tmp_path / "wan")
    assert weights["patch_embedding.weight"].shape[:2] == (native["dim"], native["in_dim"])
    assert weights["head.head.weight"].shape[0] == native["out_dim"] * 4
    assert weights["text_embedding.0.weight"].shape == (native["dim"], native["text_dim"])
    assert weights["time_embedding.0.weight"].shape == (native["dim"], native["freq_dim"])
    assert weights["blocks.1.ffn.0.weight"].shape == (native["ffn_dim"], native["dim"])
    convert_checkpoint("wan", "diffusers", tmp_path / "wan", tmp_path / "back", progress=False)
    original = json.loads((folder / "config.json").read_text())
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    for key in ("in_channels", "out_channels", "text_dim", "freq_dim", "ffn_dim", "num_layers", "num_attention_heads",
                "attention_head_dim", "patch_size", "cross_attn_norm", "eps"):
        assert back[key] == original[key], key


@pytest.mark.parametrize("cross_attn_norm", [True, False], ids=["norm", "no-norm"])
def test_a_native_file_without_config_has_its_config_inferred_from_shapes(tmp_path, cross_attn_norm):
    """A lone native .safetensors (no config.json beside it; Wan's head dim 128) converts to the diffusers
    model it came from: every inferred field, the cross-attention norm's presence included, and every tensor."""
    config = dict(ASYMMETRIC, num_attention_heads=1, attention_head_dim=128, ffn_dim=32, num_layers=1,
                  cross_attn_norm=cross_attn_norm)
    folder = _save(tmp_path / "diffusers", 2, **config)
    convert_checkpoint("diffusers", "wan", folder, tmp_path / "wan", progress=False)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tmp_path / "wan" / "diffusion_pytorch_model.safetensors", lone / "student.safetensors")
    convert_checkpoint("wan", "diffusers", lone / "student.safetensors", tmp_path / "back", progress=False)
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert {k: back[k] for k in config} == {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    original, returned = tensors(folder), tensors(tmp_path / "back")
    assert original.keys() == returned.keys() and all(torch.equal(original[k], returned[k]) for k in original)


def test_verify_compares_the_output_it_was_given(tmp_path):
    """``--verify`` must read the converted output: a bf16 cast shows its rounding (about 2^-9 relative),
    a faithful float32 conversion ~0; and ``layers`` keeps the first blocks on both sides, so that a
    difference in block 1 alone is invisible at layers=1 and seen without it."""
    folder = _save(tmp_path / "a", 3, **ASYMMETRIC)
    convert_checkpoint("diffusers", "megatron", folder, tmp_path / "bf16", dtype=torch.bfloat16, progress=False)
    assert 1e-5 < verify_conversion("diffusers", folder, "megatron", tmp_path / "bf16") < 5e-2
    # b: a's weights with block 1 alone drawn afresh
    other = _save(tmp_path / "b_src", 4, **ASYMMETRIC)
    model = WanTransformer3DModel.from_pretrained(folder)
    fresh = WanTransformer3DModel.from_pretrained(other)
    model.blocks[1].load_state_dict(fresh.blocks[1].state_dict())
    model.save_pretrained(tmp_path / "b")
    convert_checkpoint("diffusers", "megatron", tmp_path / "b", tmp_path / "b_megatron", progress=False)
    assert verify_conversion("diffusers", folder, "diffusers", tmp_path / "b", layers=1) == 0.0
    assert verify_conversion("diffusers", folder, "megatron", tmp_path / "b_megatron", layers=1) < 1e-12
    assert verify_conversion("megatron", tmp_path / "b_megatron", "diffusers", folder, layers=1) < 1e-12
    assert verify_conversion("diffusers", folder, "diffusers", tmp_path / "b") > 1e-3
    assert verify_conversion("diffusers", folder, "megatron", tmp_path / "b_megatron") > 1e-3


def test_a_tp_size_that_does_not_divide_the_ffn_is_refused(tmp_path):
    """TP 2 divides the 2 heads but not an FFN of 25 channels: refused before anything is written."""
    folder = _save(tmp_path / "diffusers", 5, **dict(ASYMMETRIC, ffn_dim=25))
    with pytest.raises(ConfigMismatchError, match="ffn_dim 25"):
        convert_checkpoint("diffusers", "megatron", folder, tmp_path / "out", tensor_parallel_size=2, progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
