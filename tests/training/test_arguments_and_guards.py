"""Config errors before any model is built; the non-finite gradient guard of the CPU optimizer."""

import pytest
import torch
import yaml
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

from megatron_rcm.parallel import parallel_context
from megatron_rcm.testing import run_distributed
from megatron_rcm.training.arguments import ConfigError, parse_args, validate
from megatron_rcm.training.config import OptimizationConfig
from megatron_rcm.training.input_checks import check_output_path
from megatron_rcm.training.optimizer import build_optimizer, optimizer_step

from .tiny_setup import make_inputs


@pytest.fixture(scope="module")
def flags(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def test_command_line_overrides_yaml_and_yaml_overrides_defaults(flags):
    args = parse_args([*flags, "--lr", "0.5"])
    assert args.lr == 0.5  # tiny_cpu.yaml says 1e-3
    assert args.student_update_freq == 2 and args.fake_score_lr == 1e-3  # from the YAML
    assert args.p_std == 1.6  # default
    assert parse_args([*flags, "--no-sequence-parallel"]).sequence_parallel is False


def test_unknown_yaml_key_is_an_error(flags, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"lr": 1e-3, "learning_rate": 1e-3}))
    with pytest.raises(ConfigError, match=r"unknown keys \['learning_rate'\]"):
        parse_args([*flags, "--config", str(bad)])


def test_yaml_keys_may_be_spelt_with_dashes(flags, tmp_path):
    """A YAML key is a flag's name with or without its dashes, as on the command line."""
    dashed = tmp_path / "dashed.yaml"
    dashed.write_text(yaml.safe_dump({"tensor-model-parallel-size": 2, "fake-score-lr": 0.25}))
    args = parse_args([*flags, "--config", str(dashed)])
    assert (args.tensor_model_parallel_size, args.fake_score_lr) == (2, 0.25)


@pytest.mark.parametrize("values, message", [
    ({"train_iters": True}, "train_iters must be an integer, got True"),  # YAML's true is a bool, not 1
    ({"seed": 3.0}, "seed must be an integer, got 3.0"),
    ({"lr": False}, "lr must be a number, got False"),
    ({"mid_times": [1.5, "1.2", 1.1]}, r"mid_times must be a list of numbers, got \[1.5, '1.2', 1.1\]"),
    ({"bf16": "no"}, "bf16 must be true or false, got 'no'"),
])
def test_yaml_values_of_another_type_are_refused(flags, tmp_path, values, message):
    """argparse converts the command line's strings; a YAML value arrives typed by YAML and must be checked."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=f": {message}$"):
        parse_args([*flags, "--config", str(bad)])


@pytest.mark.parametrize("extra, world, message", [
    (["--tensor-model-parallel-size", "3"], 2, "not divisible by tensor"),
    (["--global-batch-size", "3"], 2, "must equal micro batch 1 x data-parallel size 2"),
    (["--tensor-model-parallel-size", "4"], 4, "num_attention_heads \\(2\\) is not divisible"),
    (["--context-parallel-size", "4"], 4, "divisible by the context-parallel size"),
    (["--sequence-parallel"], 2, "sequence_parallel needs tensor_model_parallel_size > 1"),
    (["--bf16"], 1, "--bf16 needs CUDA"),
    (["--save-interval", "5"], 1, "--save-interval needs --save"),
    (["--save-interval", "-1"], 1, "--save-interval needs --save and must be positive"),
    (["--student-update-freq", "0"], 1, "student_update_freq must be >= 1"),
    (["--seed", "0"], 1, "--seed must be a positive integer"),
    (["--dmd-guidance-scale", "0.5"], 1, "dmd_guidance_scale must be >= 1"),
    (["--micro-batch-size", "0"], 1, "--micro-batch-size and --train-iters must be positive"),
    (["--max-skipped-batches", "-1"], 1, "--num-workers and --max-skipped-batches must be >= 0"),
    (["--adam-eps", "0"], 1, "adam_eps must be > 0, got 0"),
    (["--lr-warmup-iters", "-1"], 1, "lr_warmup_iters must be >= 0, got -1"),
    (["--keep-last", "0"], 1, "keep_last must be >= 1, got 0"),
    (["--log-interval", "0"], 1, "log_interval must be >= 1, got 0"),
])
def test_inconsistent_settings_are_reported_before_building(flags, extra, world, message):
    with pytest.raises(ConfigError, match=message):
        validate(parse_args([*flags, *extra]), world_size=world)


def test_the_global_batch_defaults_to_micro_batch_times_data_parallel_size(flags):
    args = parse_args([*flags, "--micro-batch-size", "3", "--tensor-model-parallel-size", "2"])
    assert validate(args, world_size=8).data.global_batch_size == 3 * 4  # 8 ranks at TP 2: data-parallel size 4


def test_missing_negative_embedding_with_guidance(flags):
    i = flags.index("--negative-prompt-embedding")
    without = flags[:i] + flags[i + 2:]
    with pytest.raises(ConfigError, match="needs --negative-prompt-embedding"):
        validate(parse_args(without), world_size=1)
    validate(parse_args([*without, "--guidance-scale", "1"]), world_size=1)
    with pytest.raises(ConfigError, match="--dmd-guidance-scale other than 1 needs --negative-prompt-embedding"):
        validate(parse_args([*without, "--guidance-scale", "1", "--dmd-guidance-scale", "3"]), world_size=1)


def _nonfinite_gradient_is_skipped():
    with parallel_context():
        from megatron_rcm.models.wan import WanModel, wan_config

        config = wan_config("tiny-a", use_cpu_initialization=True)
        model = WanModel(config)
        ddp = DistributedDataParallel(config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
        settings = OptimizationConfig(weight_decay=0.01, adam_beta1=0.0, adam_beta2=0.999, adam_eps=1e-8, clip_grad=0.5)
        optimizer = build_optimizer(ddp, settings, lr=1e-2, bf16=False)
        g = torch.Generator().manual_seed(0)
        x, t, text = torch.randn(1, 4, 2, 4, 4, generator=g), torch.rand(1, generator=g) * 1000, torch.randn(1, 3, 24)
        results = []
        for poison in (True, False):
            before = [p.detach().clone() for p in model.parameters()]
            ddp.zero_grad_buffer()
            model(x, t, text).square().sum().backward()
            if poison:
                next(model.parameters()).main_grad.view(-1)[0] = float("nan")
            updated, norm = optimizer_step(optimizer, settings.clip_grad)
            clipped = torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters())).item()
            changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
            results.append((updated, norm, changed, clipped))
        return results


def test_cpu_optimizer_skips_a_nonfinite_gradient_and_clips():
    (skipped, nan_norm, changed_after_nan, _), (updated, norm, changed, clipped) = run_distributed(
        _nonfinite_gradient_is_skipped, world_size=1)[0]
    assert not skipped and nan_norm != nan_norm and not changed_after_nan
    assert updated and changed and norm > 0.5 and clipped == pytest.approx(0.5, rel=1e-5)


def test_output_paths_are_checked_relative_or_absolute_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("x")
    check_output_path("--save", "new/a/b", folder=True)  # made at the first save
    check_output_path("--log-jsonl", "f", folder=False)  # appended to
    for flag, path, folder, message in (("--save", "f/run", True, "--save f/run: f is a file, not a folder"),
                                        ("--save", "f", True, "--save f exists and is not a folder"),
                                        ("--log-jsonl", ".", False, "--log-jsonl . exists and is not a file"),
                                        ("--save", f"{tmp_path}/f/x/y", True, f"{tmp_path}/f is a file")):
        with pytest.raises(ValueError, match=message):
            check_output_path(flag, path, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing made

