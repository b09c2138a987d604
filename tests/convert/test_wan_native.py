"""Wan native <-> diffusers conversion: bit-exact round trips, loadable by diffusers, clear failures."""

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from megatron_rcm.convert.tensor_files import CheckpointFileError, TensorInfo, TensorReader, write_safetensors_shards
from megatron_rcm.convert.wan_keys import UnknownKeyError
from megatron_rcm.convert.wan_native import (
    ConfigMismatchError,
    convert_diffusers_to_native,
    convert_native_to_diffusers,
    expected_diffusers_shapes,
)
from megatron_rcm.atomic_output import OutputExistsError

from .checkpoints import TINY, leftovers as _leftovers, random_diffusers as _random_diffusers, tensors as _tensors

def test_expected_shapes_cover_the_real_model(tmp_path):
    model = WanTransformer3DModel(**TINY)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_diffusers_shapes(
        json.loads(json.dumps(dict(model.config))))


def test_round_trips_are_bit_exact_and_diffusers_loads_the_result(tmp_path):
    model, folder = _random_diffusers(tmp_path)
    native = tmp_path / "native"
    convert_diffusers_to_native(folder, native, progress=False)
    native_tensors = _tensors(native)
    assert "blocks.1.cross_attn.o.weight" in native_tensors and "head.modulation" in native_tensors
    back = tmp_path / "back"
    convert_native_to_diffusers(native, back, progress=False)
    original, returned = _tensors(folder), _tensors(back)
    assert original.keys() == returned.keys()
    assert all(torch.equal(original[k], returned[k]) for k in original)
    again = tmp_path / "native_again"
    convert_diffusers_to_native(back, again, progress=False)
    native_again = _tensors(again)
    assert native_again.keys() == native_tensors.keys()
    assert all(torch.equal(native_tensors[k], v) for k, v in native_again.items())

    loaded = WanTransformer3DModel.from_pretrained(back).double()
    x = torch.randn(1, 4, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([321.0], dtype=torch.float64)
    text = torch.randn(1, 5, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model.double()(x, t, text).sample, loaded(x, t, text).sample)
    assert _leftovers(tmp_path) == []


def test_native_pt_export_with_prefix_and_bf16_cast(tmp_path):
    _, folder = _random_diffusers(tmp_path)
    native = tmp_path / "native"
    cfg = convert_diffusers_to_native(folder, native, progress=False)
    state = {f"net.{k}": v for k, v in load_file(native / "diffusion_pytorch_model.safetensors").items()}
    export = tmp_path / "export"
    export.mkdir()
    torch.save({"model": state, "iteration": 7}, export / "student.pt")
    (export / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "from_pt"
    convert_native_to_diffusers(export / "student.pt", out, dtype=torch.bfloat16, progress=False)
    converted, original = _tensors(out), _tensors(folder)
    assert converted.keys() == original.keys()
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, original[k].bfloat16()) for k, v in converted.items())


def test_sharded_output_reads_back(tmp_path):
    infos = {f"t{i}": TensorInfo((3, 5), torch.float32) for i in range(5)}
    data = {k: torch.randn(3, 5) for k in infos}
    names = write_safetensors_shards(tmp_path, "w", infos, data.__getitem__, max_shard_bytes=130)
    assert len(names) == 3 and (tmp_path / "w.safetensors.index.json").exists()
    reader = TensorReader(tmp_path)
    assert all(torch.equal(reader.get(k), data[k]) for k in data)


def test_truncated_file_is_refused_and_nothing_is_written(tmp_path):
    _, folder = _random_diffusers(tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointFileError, match="damaged or truncated"):
        convert_diffusers_to_native(folder, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_missing_and_unknown_keys_are_listed(tmp_path):
    _, folder = _random_diffusers(tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("blocks.1.attn2.norm_k.weight")
    save_file(state, weights)
    with pytest.raises(CheckpointFileError, match=r"missing keys \['blocks.1.attn2.norm_k.weight'\]"):
        convert_diffusers_to_native(folder, tmp_path / "out", progress=False)
    native = tmp_path / "native_bad"
    native.mkdir()
    save_file({"blocks.0.self_attn.qkv.weight": torch.randn(2, 2)}, native / "w.safetensors")
    with pytest.raises(UnknownKeyError, match="blocks.0.self_attn.qkv.weight"):
        convert_native_to_diffusers(native / "w.safetensors", tmp_path / "out2", progress=False)


def test_config_mismatch_and_existing_output(tmp_path):
    _, folder = _random_diffusers(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "ffn_dim": 32}))
    with pytest.raises(ConfigMismatchError, match=r"ffn.net.0.proj.weight: \(24, 16\) != \(32, 16\)"):
        convert_diffusers_to_native(folder, tmp_path / "out", progress=False)
    (folder / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError, match="taken exists"):
        convert_diffusers_to_native(folder, tmp_path / "taken", progress=False)


def test_interrupted_conversion_leaves_no_folder(tmp_path, monkeypatch):
    _, folder = _random_diffusers(tmp_path)
    calls = []

    def failing_get(self, key):
        calls.append(key)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return original_get(self, key)

    original_get = TensorReader.get
    monkeypatch.setattr(TensorReader, "get", failing_get)
    with pytest.raises(KeyboardInterrupt):
        convert_diffusers_to_native(folder, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_command_line_exits_with_one_line_reason(tmp_path):
    import subprocess
    import sys

    _, folder = _random_diffusers(tmp_path)
    run = lambda *a: subprocess.run([sys.executable, "tools/convert_checkpoint.py", *a], capture_output=True, text=True)
    ok = run("--from", "diffusers", "--to", "wan", "--input", str(folder), "--output", str(tmp_path / "w"))
    assert ok.returncode == 0, ok.stderr
    bad = run("--from", "diffusers", "--to", "wan", "--input", str(folder), "--output", str(tmp_path / "w"))
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("convert_checkpoint: error:")
    assert "exists" in bad.stderr


def test_damaged_torch_files_are_one_error_whatever_their_bytes(tmp_path):
    """Random bytes reach different failures inside torch.load (unpickler opcodes, index and decode
    errors, an unknown pickle protocol's warning): each must end as the same one-line error, silently."""
    import os
    import warnings

    from megatron_rcm.convert.tensor_files import load_torch_file

    path = tmp_path / "damaged.pth"
    for i in range(300):
        data = os.urandom(4096)
        path.write_bytes(b"\x80" + data[1:] if i % 3 == 0 else data)  # a third start with pickle's PROTO opcode
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(CheckpointFileError, match=r"^.*damaged\.pth: not a readable torch state dict"):
                load_torch_file(path)
        assert [str(w.message) for w in caught] == []
