"""The typed run config: every flag fills one field, defaults come from the dataclasses, and the
recipe a checkpoint records is checked on resume (also against checkpoints saved before a field existed)."""

import dataclasses

import pytest
import torch

from megatron_rcm.losses.config import RCMConfig
from megatron_rcm.training.arguments import ConfigError, _parser, load_config
from megatron_rcm.training.config import OptimizationConfig, TrainingConfig
from megatron_rcm.training.state import _check_recipe, recipe_of

from .tiny_setup import make_inputs


@pytest.fixture(scope="module")
def required(tmp_path_factory):
    """The required flags, with a tiny teacher and no --config (the defaults are under test)."""
    flags = make_inputs(tmp_path_factory.mktemp("inputs"))
    flags = dict(zip(flags[::2], flags[1::2]))
    return ["--teacher", flags["--teacher"], "--data-path", flags["--data-path"], "--train-iters", "7",
            "--negative-prompt-embedding", flags["--negative-prompt-embedding"]]


def _sections(config):
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if dataclasses.is_dataclass(getattr(config, f.name))}


def test_defaults_are_the_dataclasses(required):
    config = load_config(required, world_size=1)
    for name, section in _sections(config).items():
        if name != "data":
            assert section == type(section)(), name
    assert config.data.global_batch_size == 1 and config.seed == TrainingConfig().seed


def test_optimization_defaults_are_the_documented_recipe():
    """docs/math.md section 5 (the 1.3B recipe): AdamW betas (0, 0.999), weight decay 0.01, eps 1e-8,
    learning rates 2e-6 (student) and 4e-7 (fake score), a warm-up of 100 updates, no clipping."""
    assert dataclasses.asdict(OptimizationConfig()) == dict(
        lr=2e-6, fake_score_lr=4e-7, lr_warmup_iters=100, weight_decay=0.01, adam_beta1=0.0, adam_beta2=0.999,
        adam_eps=1e-8, clip_grad=0.0)


def test_a_bool_is_not_a_number_setting():
    """``True == 1`` in Python: a bool given in code (YAML values are checked before) must not pass as 1."""
    with pytest.raises(ValueError, match="^lr must be >= 0, got True$"):
        OptimizationConfig(lr=True)


def test_every_flag_fills_its_field(required):
    # a value other than the default for one flag of each section, spelled as on the command line
    config = load_config([*required, "--p-mean", "1.5", "--mid-times", "1.5", "1.2", "1.1", "--context-parallel-size",
                          "2", "--cp-comm-type", "p2p", "--adam-beta2", "0.95", "--num-workers", "0", "--keep-last",
                          "5", "--log-interval", "9", "--ema-std", "0.05"], world_size=2)
    assert config.rcm == RCMConfig(p_mean=1.5, mid_times=(1.5, 1.2, 1.1))
    assert config.parallel.context_parallel_size == 2 and config.networks.cp_comm_type == "p2p"
    assert config.optimization.adam_beta2 == 0.95 and config.data.num_workers == 0
    assert config.checkpoint.keep_last == 5 and config.logging.log_interval == 9 and config.ema_std == 0.05
    assert config.train_iters == 7 and config.data.global_batch_size == 1  # DP 1 at CP 2 on 2 ranks


def test_flags_and_fields_correspond_one_to_one():
    flags = {a.dest for a in _parser()._actions} - {"help", "config", "debug"}  # debug: tracebacks, no setting
    config = TrainingConfig()
    fields = {f.name for section in [config, *_sections(config).values()] for f in dataclasses.fields(section)}
    fields -= set(_sections(config)) | {"pipeline_model_parallel_size"}  # no pipeline parallelism here
    assert flags == fields


@pytest.mark.parametrize("flags, message", [
    (["--scm-weight", "0", "--dmd-weight", "0"], "loss weights must not both be 0"),
    (["--mid-times", "nan", "1.2", "1.1"], "mid_times must fall strictly"),
    (["--p-std", "0"], "p_std must be > 0, got 0"),
    (["--ema-std", "0.5"], "ema_std must be > 0 and < 0.288675"),
    (["--adam-beta1", "1"], "adam_beta1 must be >= 0 and < 1, got 1"),
    (["--mid-times", "1.5"], "mid_times needs 3 times"),
    (["--mid-times", "0.3", "0.86", "1.23"], r"mid_times must fall strictly .* got \(0.3, 0.86, 1.23\)"),
    (["--mid-times", "1.6", "1.4", "1.0"], "mid_times must fall strictly"),
    (["--mid-times", "1.5", "1.4", "0"], "mid_times must fall strictly"),
    (["--max-rollout-steps", "5"], "max_rollout_steps must lie in 1..4"),
    (["--dcm-step", "-0.1"], r"dcm_step must be >= 0 \(0: off\), got -0.1"),
    (["--dmd-reference-numel", "-3"], r"dmd_reference_numel must be >= 0 \(0: off\), got -3"),
])
def test_recipe_errors_are_config_errors(required, flags, message):
    with pytest.raises(ConfigError, match=message):
        load_config([*required, *flags], world_size=1)


def _float_settings():
    config = TrainingConfig()
    return [f.name for section in [config, *_sections(config).values()] for f in dataclasses.fields(section)
            if isinstance(getattr(section, f.name), float) or f.name == "dmd_guidance_scale"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_number_setting_refuses_nan_and_infinity(required, value):
    """Comparisons with nan are all False: a range check alone would let it through, to train on NaN."""
    assert len(_float_settings()) >= 15
    for name in _float_settings():
        with pytest.raises(ConfigError, match=f"^{name} must be"):
            load_config([*required, f"--{name.replace('_', '-')}={value}"], world_size=1)


def test_resume_accepts_the_same_recipe_and_one_saved_before_a_field_existed(required):
    config = load_config(required, world_size=1)
    current = recipe_of(config)
    _check_recipe(dict(current), current)
    older = {k: (list(v) if isinstance(v, tuple) else v) for k, v in current.items() if k != "max_rollout_steps"}
    _check_recipe(older, current)  # saved as a list, and before max_rollout_steps: it was 4 then


def test_resume_refuses_another_recipe(required):
    current = recipe_of(load_config([*required, "--max-rollout-steps", "3"], world_size=1))
    saved = dict(current, p_mean=1.5)
    with pytest.raises(ValueError, match=r"p_mean=1.5 -> 0.7"):
        _check_recipe(saved, current)
    older = {k: v for k, v in current.items() if k != "max_rollout_steps"}  # saved when it was 4
    with pytest.raises(ValueError, match=r"max_rollout_steps=4 -> 3"):
        _check_recipe(older, current)


def test_resume_refuses_another_seed_or_global_batch(required):
    """The noise and the data order are functions of the seed and the global batch: a resume that
    changed either would not continue the saved run's draws."""
    saved = recipe_of(load_config(required, world_size=1))
    for flags, message in ((["--seed", "5"], r"seed=1234 -> 5"),
                           (["--micro-batch-size", "2", "--global-batch-size", "2"], r"global_batch_size=1 -> 2")):
        with pytest.raises(ValueError, match=message):
            _check_recipe(saved, recipe_of(load_config([*required, *flags], world_size=1)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for CPU runs")
def test_a_cpu_run_without_the_triton_interpreter_is_refused_before_training(required, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="set TRITON_INTERPRET=1"):
        load_config(required, world_size=1)
    load_config([*required, "--dcm-step", "0.05"], world_size=1)  # the discrete tangent runs no JVP kernel
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    load_config(required, world_size=1)


@pytest.mark.parametrize("value", ["off", "false", "2", ""])
def test_a_wrong_flash_attention_4_switch_is_refused_before_training(required, monkeypatch, value):
    monkeypatch.setenv("MEGATRON_RCM_FA4", value)
    with pytest.raises(ConfigError, match=f"MEGATRON_RCM_FA4 must be 0 .* or 1 .*, got {value!r}"):
        load_config(required, world_size=1)
    for good in ("0", "1"):
        monkeypatch.setenv("MEGATRON_RCM_FA4", good)
        load_config(required, world_size=1)
