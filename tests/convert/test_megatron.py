"""diffusers / Wan native <-> Megatron distributed checkpoint: bit-exact round trips, any TP on load,
float64 parity with diffusers through load_model, clear failures that leave nothing behind."""

import subprocess
import sys

import pytest
import torch
from megatron.core import dist_checkpointing, parallel_state
from torch.distributed.checkpoint import FileSystemReader

from megatron_rcm import load_model
from megatron_rcm.convert.api import ConversionRequestError, convert_checkpoint, detect_format
from megatron_rcm.convert.megatron_dist import MODEL_PREFIX
from megatron_rcm.convert.tensor_files import CheckpointFileError
from megatron_rcm.convert.verify import verify_conversion
from megatron_rcm.convert.wan_native import ConfigMismatchError
from megatron_rcm.atomic_output import OutputExistsError
from megatron_rcm.loading import MODELS_KEY, checkpoint_models, load_model_config
from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.testing import run_distributed

from ..models.wan_oracle import config, diffusers_model, inputs, oracle, relative_error
from .checkpoints import leftovers, random_diffusers, tensors

TOL = 1e-10


def _cli(*args):
    return subprocess.run([sys.executable, "tools/convert_checkpoint.py", "--no-progress", *map(str, args)],
                          capture_output=True, text=True)


def test_diffusers_megatron_tp2_diffusers_is_bit_exact(tmp_path):
    model, folder = random_diffusers(tmp_path)
    megatron = tmp_path / "megatron"
    convert_checkpoint("diffusers", "megatron", folder, megatron, tensor_parallel_size=2, progress=False)
    chunks = FileSystemReader(megatron).read_metadata().state_dict_metadata
    # TP-split tensors are stored as the two ranks hold them, replicated ones once
    assert [tuple(c.offsets) for c in chunks[MODEL_PREFIX + "blocks.0.attn1.qkv.weight"].chunks] == [(0, 0, 0), (0, 8, 0)]
    assert [tuple(c.offsets) for c in chunks[MODEL_PREFIX + "blocks.1.ffn.fc2.weight"].chunks] == [(0, 0), (0, 12)]
    assert len(chunks[MODEL_PREFIX + "proj_out.weight"].chunks) == 1
    back = tmp_path / "back"
    convert_checkpoint("megatron", "diffusers", megatron, back, progress=False)
    original, returned = tensors(folder), tensors(back)
    assert original.keys() == returned.keys()
    assert all(torch.equal(original[k], returned[k]) for k in original)
    wan, wan_back = tmp_path / "wan", tmp_path / "wan_back"
    convert_checkpoint("megatron", "wan", megatron, wan, progress=False)
    convert_checkpoint("wan", "megatron", wan, tmp_path / "megatron2", tensor_parallel_size=2, progress=False)
    convert_checkpoint("megatron", "diffusers", tmp_path / "megatron2", wan_back, progress=False)
    wan_returned = tensors(wan_back)
    assert wan_returned.keys() == original.keys()
    assert all(torch.equal(original[k], v) for k, v in wan_returned.items())
    assert [detect_format(p) for p in (folder, megatron, wan)] == ["diffusers", "megatron", "wan"]
    for unknown in (tmp_path / "missing", tmp_path):
        with pytest.raises(ConversionRequestError, match="pass --from|does not exist"):
            detect_format(unknown)
    bf16 = tmp_path / "bf16"
    convert_checkpoint("diffusers", "megatron", folder, bf16, dtype=torch.bfloat16, progress=False)
    convert_checkpoint("megatron", "diffusers", bf16, tmp_path / "bf16_back", progress=False)
    bf16_back = tensors(tmp_path / "bf16_back")
    assert bf16_back.keys() == original.keys()
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, original[k].bfloat16()) for k, v in bf16_back.items())
    assert verify_conversion("diffusers", folder, "megatron", megatron) < 1e-12
    assert verify_conversion("megatron", megatron, "wan", wan) < 1e-12
    assert verify_conversion("wan", wan, "diffusers", wan_back) == 0.0
    assert leftovers(tmp_path) == []


def _float64_case(tmp_path):
    cfg = config("tiny-a")
    reference = diffusers_model(cfg, seed=21)
    reference.save_pretrained(tmp_path / "diffusers")
    data = inputs(cfg, 1, (2, 2, 4), 3, seed=22)
    return reference, data


def _check(model, data, expected):
    out = model(data["x"], data["t"], data["text"])
    out_p, out_t = model.jvp(data["x"], data["t"], data["text"], data["x_t"], data["t_t"])
    return dict(out=relative_error(out, expected["out"]), jvp_primal=relative_error(out_p, expected["out"]),
                jvp=relative_error(out_t, expected["out_t"]))


def _load_at_tp2_and_resave(path, resaved, data, expected):
    with parallel_context(ParallelConfig(tensor_model_parallel_size=2)), torch.no_grad():
        model = load_model(str(path), params_dtype=torch.float64)
        assert model.config.tensor_model_parallel_size == 2
        errors = _check(model, data, expected)
        # a training run's own save (megatron-core, TP=2, fused projections through factories)
        # is the same format: it converts back like the converter's output
        state = {**model.sharded_state_dict(prefix="ema."), **checkpoint_models({"ema.": model.config})}
        if parallel_state.get_tensor_model_parallel_rank() == 0:
            resaved.mkdir()
        torch.distributed.barrier()
        dist_checkpointing.save(state, str(resaved))
        return errors


def test_load_model_matches_diffusers_in_float64_single_and_tp2(tmp_path):
    reference, data = _float64_case(tmp_path)
    expected = oracle(reference, data)
    megatron = tmp_path / "megatron"
    convert_checkpoint("diffusers", "megatron", tmp_path / "diffusers", megatron, tensor_parallel_size=2,
                       progress=False)
    with parallel_context(), torch.no_grad():
        errors = _check(load_model(str(megatron), params_dtype=torch.float64), data, expected)
    assert all(e < TOL for e in errors.values()), errors
    # a checkpoint written in the TP=1 layout loads at TP=2
    single = tmp_path / "megatron_tp1"
    convert_checkpoint("diffusers", "megatron", tmp_path / "diffusers", single, progress=False)
    resaved = tmp_path / "resaved"
    for errors in run_distributed(_load_at_tp2_and_resave, world_size=2, args=(single, resaved, data, expected)):
        assert all(e < TOL for e in errors.values()), errors
    convert_checkpoint("megatron", "diffusers", resaved, tmp_path / "exported", megatron_prefix="ema.",
                       progress=False)
    original, exported = tensors(tmp_path / "diffusers"), tensors(tmp_path / "exported")
    assert original.keys() == exported.keys() and all(torch.equal(original[k], exported[k]) for k in original)


def test_load_model_config_is_the_config_load_model_builds_without_reading_weights(tmp_path):
    _, folder = random_diffusers(tmp_path)
    megatron = tmp_path / "megatron"
    convert_checkpoint("diffusers", "megatron", folder, megatron, tensor_parallel_size=2, progress=False)
    with parallel_context():
        for path in (folder, megatron):
            config = load_model_config(str(path), params_dtype=torch.float64)
            built = load_model(str(path), params_dtype=torch.float64).config
            assert config.architecture() == built.architecture()
            assert (config.params_dtype, config.kv_channels) == (built.params_dtype, built.kv_channels)
            with pytest.raises(ValueError, match="unknown config override"):
                load_model_config(str(path), no_such_field=1)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert load_model_config(str(folder)).architecture() == config.architecture()
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_model(str(folder))


def test_bad_inputs_exit_with_one_line_and_leave_nothing(tmp_path):
    _, folder = random_diffusers(tmp_path)
    megatron = tmp_path / "megatron"
    assert _cli("--from", "diffusers", "--to", "megatron", "--input", folder, "--output", megatron).returncode == 0

    def refused(expected, *args):
        result = _cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, result.stderr
        assert lines[-1].startswith("convert_checkpoint: error:") and expected in lines[-1], lines[-1]
        assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []

    refused("exists", "--from", "diffusers", "--to", "megatron", "--input", folder, "--output", megatron)
    refused("divide attention heads 2", "--from", "diffusers", "--to", "megatron", "--input", folder,
            "--output", tmp_path / "out", "--tensor-parallel-size", "4")
    refused("only to a megatron output", "--from", "megatron", "--to", "wan", "--input", megatron,
            "--output", tmp_path / "out", "--tensor-parallel-size", "2")
    distcp = megatron / "__0_0.distcp"
    intact = distcp.read_bytes()
    distcp.write_bytes(intact[: len(intact) // 2])
    refused("cannot read", "--from", "megatron", "--to", "diffusers", "--input", megatron, "--output", tmp_path / "out")
    distcp.write_bytes(intact)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    refused("damaged or truncated", "--from", "diffusers", "--to", "megatron", "--input", folder,
            "--output", tmp_path / "out")


def test_megatron_key_and_config_errors(tmp_path):
    _, folder = random_diffusers(tmp_path)
    megatron = tmp_path / "megatron"
    convert_checkpoint("diffusers", "megatron", folder, megatron, progress=False)
    common = torch.load(megatron / "common.pt")
    record = common[MODELS_KEY][MODEL_PREFIX]["config"]
    torch.save({MODELS_KEY: {MODEL_PREFIX: {**common[MODELS_KEY][MODEL_PREFIX],
                                                       "config": {**record, "ffn_hidden_size": 32}}}},
               megatron / "common.pt")
    with pytest.raises(ConfigMismatchError, match=r"blocks.0.ffn.fc1.weight: \(24, 16\) != \(32, 16\)"):
        convert_checkpoint("megatron", "diffusers", megatron, tmp_path / "out", progress=False)
    torch.save({MODELS_KEY: {MODEL_PREFIX: {**common[MODELS_KEY][MODEL_PREFIX],
                                                       "config": {**record, "num_layers": 1}}}},
               megatron / "common.pt")
    with pytest.raises(CheckpointFileError, match=r"missing keys \[\]; unexpected keys \['model.blocks.1.attn1"):
        convert_checkpoint("megatron", "diffusers", megatron, tmp_path / "out", progress=False)
    with pytest.raises(CheckpointFileError, match="no model with prefix 'ema.'"):
        convert_checkpoint("megatron", "diffusers", megatron, tmp_path / "out", megatron_prefix="ema.",
                           progress=False)
    two = {MODEL_PREFIX: common[MODELS_KEY][MODEL_PREFIX], "ema.": common[MODELS_KEY][MODEL_PREFIX]}
    torch.save({MODELS_KEY: two}, megatron / "common.pt")
    with pytest.raises(CheckpointFileError, match=r"models \['ema.', 'model.'\]; choose one with --megatron-prefix"):
        convert_checkpoint("megatron", "diffusers", megatron, tmp_path / "out", progress=False)
    with pytest.raises(CheckpointFileError, match="not a Megatron distributed checkpoint"):
        convert_checkpoint("megatron", "diffusers", folder, tmp_path / "out", progress=False)
    with pytest.raises(ConversionRequestError, match="both diffusers"):
        convert_checkpoint("diffusers", "diffusers", folder, tmp_path / "out", progress=False)
    with pytest.raises(OutputExistsError):
        convert_checkpoint("diffusers", "megatron", folder, megatron, progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_interrupted_megatron_write_leaves_no_folder(tmp_path, monkeypatch):
    _, folder = random_diffusers(tmp_path)
    from megatron_rcm.convert import tensor_files

    calls, original_get = [], tensor_files.TensorReader.get

    def failing_get(self, key):
        calls.append(key)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return original_get(self, key)

    monkeypatch.setattr(tensor_files.TensorReader, "get", failing_get)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint("diffusers", "megatron", folder, tmp_path / "out", progress=False)
    assert len(calls) == 20 and not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_checkpoint_of_two_models_loaded_without_a_prefix_names_both(tmp_path):
    """A training save records the student and its EMA: without model_prefix the loader cannot choose
    one, and says which prefixes it may take; with one it reads that model's config."""
    _, folder = random_diffusers(tmp_path)
    path = tmp_path / "two_models"
    with parallel_context():
        model = load_model(str(folder))
        state = {**model.sharded_state_dict(prefix="student."), **model.sharded_state_dict(prefix="ema."),
                 **checkpoint_models({"student.": model.config, "ema.": model.config})}
        path.mkdir()
        dist_checkpointing.save(state, str(path))
        with pytest.raises(ValueError, match=r"recorded models \['ema.', 'student.'\]; pass one of them .*got None"):
            load_model_config(str(path))
        assert load_model_config(str(path), model_prefix="ema.").architecture() == model.config.architecture()
