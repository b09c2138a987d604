"""Command line of ``examples/pretrain_rcm.py``: Megatron-LM-style flags and a YAML file -> ``TrainingConfig``.

Precedence: the config dataclasses' defaults < ``--config file.yaml`` < flags on the command line.
YAML keys are the flag names with or without dashes (``tensor_model_parallel_size`` or
``tensor-model-parallel-size``); an unknown key is an error. ``validate`` checks sizes and
combinations against the world size and the teacher's config before any model is built, and
returns the one ``TrainingConfig`` the run uses.
"""

import argparse
import ast
import inspect
import json
import os
import textwrap
from dataclasses import fields

import torch
import yaml

from .. import cli
from ..loading import load_model_config
from ..losses.config import RCMConfig
from ..parallel import ParallelConfig, ParallelSizeError, launch_env
from .config import (CheckpointConfig, DataConfig, LoggingConfig, NetworksConfig, OptimizationConfig,
                     TrainingConfig)
from .input_checks import check_negative_embedding, check_output_path, check_yaml_values, read_teacher_config


class ConfigError(ValueError):
    """A configuration that cannot run, found before anything is built."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default unless its help already says what the default is."""

    def _get_help_string(self, action):
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


def _parser():
    p = cli.ArgumentParser(description="rCM distillation of a teacher DiT (any model family) on Megatron-core",
                           formatter_class=_HelpFormatter)
    p.add_argument("--config", help="YAML file of defaults; command-line flags override it")
    cli.add_debug_flag(p)
    flag = argparse.BooleanOptionalAction

    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, help="ranks that split each layer's weights")
    g.add_argument("--context-parallel-size", type=int, help="ranks that split each sample's tokens")
    g.add_argument("--sequence-parallel", action=flag,
                   help="split activations outside attention over the tensor-parallel ranks (needs TP > 1)")
    g.add_argument("--cp-comm-type", choices=["a2a", "p2p"],
                   help="context parallelism: all-to-all (a2a) or ring (p2p)")
    g.add_argument("--recompute-granularity", choices=["full", "none"],
                   help="full: recompute the blocks of student and fake score in the backward (which ones: "
                        "--recompute-method); none or unset (the default): keep every activation")
    g.add_argument("--recompute-method", choices=["uniform", "block"])
    g.add_argument("--recompute-num-layers", type=int)
    g.add_argument("--recompute-keep-attention", action=flag,
                   help="with --recompute-granularity full: the recomputed blocks keep their attention outputs "
                        "and recompute only linears, norms and elementwise work in the backward (more memory, "
                        "no attention forward in the backward; not with --cp-comm-type p2p)")
    g.add_argument("--fake-score-recompute-num-layers", type=int)
    g.add_argument("--offload-ema", action=flag, help="keep the EMA slice in host memory between student updates")
    g.add_argument("--offload-teacher", action=flag, help="keep the teacher in host memory between its calls")

    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int)
    g.add_argument("--global-batch-size", type=int,
                   help="micro batch x data-parallel size (the default; gradient accumulation is not supported)")
    g.add_argument("--train-iters", type=int)
    g.add_argument("--lr", type=float, help="student learning rate")
    g.add_argument("--fake-score-lr", type=float)
    g.add_argument("--lr-warmup-iters", type=int, help="linear warm-up, counted in each network's own updates")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--adam-beta1", type=float)
    g.add_argument("--adam-beta2", type=float)
    g.add_argument("--adam-eps", type=float)
    g.add_argument("--clip-grad", type=float, help="gradient-norm clipping; 0 = off")
    g.add_argument("--bf16", action=flag,
                   help="bf16 parameters with fp32 master weights (needs CUDA); float32 otherwise")
    g.add_argument("--seed", type=int)
    g.add_argument("--deterministic-mode", action=flag,
                   help="bit-identical reruns and resumes on GPUs (deterministic kernels, fixed cuBLAS "
                        "workspace, NCCL_ALGO=Ring), at some speed")

    g = p.add_argument_group("rCM")
    g.add_argument("--teacher", help="teacher checkpoint (diffusers folder, or what megatron_rcm.load_model reads); "
                                     "required, from the flag or the YAML file (no default)")
    g.add_argument("--model", help="model preset the teacher must match (e.g. wan2.1-t2v-1.3b, cosmos-predict2-2b); "
                                   "the family always comes from the teacher checkpoint")
    g.add_argument("--negative-prompt-embedding", help=".pt tensor [L, text_dim] for the unconditional branch")
    g.add_argument("--guidance-scale", type=float)
    g.add_argument("--dmd-guidance-scale", type=float)
    g.add_argument("--student-update-freq", type=int)
    g.add_argument("--tangent-warmup", type=int)
    g.add_argument("--scm-weight", type=float)
    g.add_argument("--dmd-weight", type=float)
    g.add_argument("--p-mean", type=float)
    g.add_argument("--p-std", type=float)
    g.add_argument("--dmd-shift", type=float)
    g.add_argument("--dmd-reference-numel", type=int)
    g.add_argument("--dcm-step", type=float)
    g.add_argument("--mid-times", type=float, nargs="+", help="TrigFlow times of the student rollout after pi/2")
    g.add_argument("--max-rollout-steps", type=int, help="the student rollout takes 1 to this many steps in turn")
    g.add_argument("--sigma-max", type=float,
                   help="the few-step sampler's starting noise level, recorded with the EMA export")
    g.add_argument("--ema-std", type=float, help="power-EMA relative std")

    g = p.add_argument_group("data")
    g.add_argument("--data-path", help="webdataset shards: a folder, a glob or 'shard-{000..009}.tar'; required, "
                                       "from the flag or the YAML file (no default)")
    g.add_argument("--num-workers", type=int)
    g.add_argument("--max-skipped-batches", type=int,
                   help="consecutive batches with NaN or inf skipped before the run stops with an error")

    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--save", help="checkpoint folder")
    g.add_argument("--load", help="resume from the latest checkpoint here (default: --save, if it has one)")
    g.add_argument("--save-interval", type=int)
    g.add_argument("--keep-last", type=int)
    g.add_argument("--log-interval", type=int, help="iterations between progress lines")
    g.add_argument("--log-jsonl", help="per-iteration JSON lines")
    g.add_argument("--tensorboard-dir")
    p.set_defaults(**_defaults())
    helps = _field_help((TrainingConfig, *_SECTIONS.values()))
    for action in p._actions:
        if action.help is None and action.dest in helps:
            action.help = helps[action.dest]
    return p


_SECTIONS = {"rcm": RCMConfig, "parallel": ParallelConfig, "networks": NetworksConfig,
             "optimization": OptimizationConfig, "data": DataConfig, "checkpoint": CheckpointConfig,
             "logging": LoggingConfig}


def _plain_fields(cls):
    return [f for f in fields(cls) if f.name not in _SECTIONS]


def _field_help(classes):
    """{field name: its docstring} of the config dataclasses, the one place a setting is described."""
    helps = {}
    for cls in classes:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        for field, doc in zip(body, body[1:]):
            if (isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr)
                    and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
                helps[field.target.id] = _as_flag_help(" ".join(doc.value.value.split()).replace("%", "%%"))
    return helps


def _as_flag_help(doc):
    """A field's docstring in the style of the other flags' help: lower case first (not in a name such
    as "RF", "L_DMD" or "TrigFlow") and no closing full stop."""
    if _capitalised(doc.split()[0]):
        doc = doc[0].lower() + doc[1:]
    return doc[:-1] if doc.endswith(".") else doc


def _capitalised(word):
    """An ordinary word at the start of a sentence, not a name written with capitals inside."""
    return len(word) > 1 and word[0].isupper() and word[1:].islower()


def _defaults():
    """Every flag's default, from the config dataclasses (the one place defaults are written)."""
    return {f.name: f.default for cls in (TrainingConfig, *_SECTIONS.values()) for f in _plain_fields(cls)}


def _check_jvp_kernel_runs(config):
    """The sCM tangent's attention JVP is a Triton kernel: on CPU tensors only its interpreter runs it,
    and the kernel fails deep inside the first iteration otherwise."""
    from megatron_rcm.kernels.flash_jvp import interpreter_enabled

    uses_jvp = config.rcm.scm_weight > 0 and not config.rcm.dcm_step
    if uses_jvp and not torch.cuda.is_available() and not interpreter_enabled():
        raise ConfigError("no CUDA device: the sCM term's attention JVP kernel runs on CPU only in Triton's "
                          "interpreter; set TRITON_INTERPRET=1 in the environment (or use a GPU)")


def _check_attention_environment():
    """A wrong MEGATRON_RCM_FA4 ends the run before it starts, not in the first attention call."""
    from megatron_rcm.kernels import fa4

    try:
        fa4.enabled_by_environment()
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _config(args) -> TrainingConfig:
    """The flat namespace as the nested config: each field takes the flag of its name."""
    def build(cls):
        return cls(**{f.name: getattr(args, f.name) for f in _plain_fields(cls)})

    return TrainingConfig(**{f.name: getattr(args, f.name) for f in _plain_fields(TrainingConfig)},
                          **{name: build(cls) for name, cls in _SECTIONS.items()})


def _read_yaml(path, actions):
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"--config {path} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path} is not valid YAML ({' '.join(str(e).split())})") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    known = {a.dest for a in actions} - {"help", "config", "debug"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}")
    try:
        check_yaml_values(values, actions, path)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return values


def parse_args(argv=None):
    """Defaults, then the YAML file, then the command line; returns an argparse Namespace."""
    parser = _parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**_read_yaml(first.config, parser._actions))
    return parser.parse_args(argv)


def _teacher_config_json(path):
    for candidate in (os.path.join(path, "transformer", "config.json"), os.path.join(path, "config.json")):
        if os.path.isfile(candidate):
            with open(candidate) as f:
                return json.load(f)
    return None


def _check_teacher_shape(args, preset):
    """The teacher's diffusers config (if it has one) builds at these parallel sizes and, with
    --model, is that preset's architecture."""
    from ..models import family_of_diffusers_config

    cfg = _teacher_config_json(args.teacher)
    if cfg is None:
        return  # another format: load_model checks it when the model is built
    family = family_of_diffusers_config(cfg)

    def build(**recompute):
        return family.config_from_diffusers(cfg, tensor_model_parallel_size=args.tensor_model_parallel_size,
                                            context_parallel_size=args.context_parallel_size,
                                            cp_comm_type=args.cp_comm_type, use_cpu_initialization=True, **recompute)

    config = build()
    if args.recompute_granularity == "full":  # each network's recompute settings are the model's to check
        for count in (args.recompute_num_layers, args.fake_score_recompute_num_layers):
            if count is not None:
                build(recompute_granularity="full", recompute_method=args.recompute_method, recompute_num_layers=count,
                      recompute_keep_attention=args.recompute_keep_attention)
    if preset is not None and config.architecture() != preset.architecture():
        theirs, ours = config.architecture(), preset.architecture()
        differ = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
        raise ValueError(f"is not a {args.model} model (it differs in {differ}); pass its preset or no --model")


def _check_files(args):
    try:
        teacher = read_teacher_config(args.teacher)
        if args.negative_prompt_embedding:
            check_negative_embedding(args.negative_prompt_embedding, teacher and teacher.get("text_dim"))
        for flag, path, folder in (("--save", args.save, True), ("--log-jsonl", args.log_jsonl, False),
                                   ("--tensorboard-dir", args.tensorboard_dir, True)):
            if path:
                check_output_path(flag, path, folder)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if teacher is None:  # not a diffusers folder: the config of what load_model reads, before any rank starts
        try:
            load_model_config(args.teacher)
        except (ValueError, OSError) as e:
            raise ConfigError(f"--teacher {args.teacher}: {e}") from e


def validate(args, world_size=None) -> TrainingConfig:
    """The run's config from ``parse_args``'s namespace, with global_batch_size filled in; raises
    ConfigError for anything that cannot run. Needs no process group."""
    for name in ("teacher", "data_path", "train_iters"):
        if getattr(args, name) is None:
            raise ConfigError(f"--{name.replace('_', '-')} is required")
    if not os.path.exists(args.teacher):
        raise ConfigError(f"teacher checkpoint {args.teacher} does not exist")
    _check_files(args)
    world_size = launch_env().world_size if world_size is None else world_size
    try:
        dp = ParallelConfig(args.tensor_model_parallel_size, args.context_parallel_size,
                            sequence_parallel=args.sequence_parallel).data_parallel_size(world_size)
    except ParallelSizeError as e:
        raise ConfigError(str(e)) from e
    if args.seed < 1:
        raise ConfigError(f"--seed must be a positive integer, got {args.seed}")
    if args.micro_batch_size < 1 or args.train_iters < 1:
        raise ConfigError("--micro-batch-size and --train-iters must be positive")
    expected = args.micro_batch_size * dp
    if args.global_batch_size is None:
        args.global_batch_size = expected
    if args.global_batch_size != expected:
        raise ConfigError(f"--global-batch-size {args.global_batch_size} must equal micro batch "
                          f"{args.micro_batch_size} x data-parallel size {dp} = {expected} "
                          f"(gradient accumulation is not supported)")
    try:
        config = _config(args)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if (config.rcm.guidance_scale, config.rcm.dmd_guidance) != (1.0, 1.0) and not args.negative_prompt_embedding:
        raise ConfigError("--guidance-scale or --dmd-guidance-scale other than 1 needs --negative-prompt-embedding")
    if args.save_interval is not None and (args.save_interval < 0 or (args.save_interval and not args.save)):
        raise ConfigError("--save-interval needs --save and must be positive (0: no periodic saves)")
    if args.fake_score_recompute_num_layers is not None and (args.recompute_granularity, args.recompute_method) != (
            "full", "block"):
        raise ConfigError("--fake-score-recompute-num-layers needs --recompute-granularity full --recompute-method "
                          "block (the counts of recomputed blocks)")
    if args.recompute_keep_attention and args.recompute_granularity != "full":
        raise ConfigError("--recompute-keep-attention needs --recompute-granularity full")
    if args.bf16 and not torch.cuda.is_available():
        raise ConfigError("--bf16 needs CUDA (bf16 params with fp32 master weights); on CPU pass --no-bf16 "
                          "(float32; the Wan recipes set bf16)")
    _check_jvp_kernel_runs(config)
    _check_attention_environment()
    if args.num_workers < 0 or args.max_skipped_batches < 0:
        raise ConfigError("--num-workers and --max-skipped-batches must be >= 0")
    from ..models import model_config

    try:
        preset = model_config(args.model, use_cpu_initialization=True) if args.model else None
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from e
    try:
        _check_teacher_shape(args, preset)
    except ValueError as e:
        raise ConfigError(f"teacher {args.teacher}: {e}") from e
    return config


def load_config(argv=None, world_size=None) -> TrainingConfig:
    """``validate(parse_args(argv))``: the config of the run the command line describes."""
    return validate(parse_args(argv), world_size)
