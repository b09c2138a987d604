"""The bad-input catalogue: for each entry point, the inputs a user gets wrong and the one line each
must answer with (a fragment of it). docs/reliability.md lists every entry with its message.

Paths are written ``{name}`` and filled from ``bad_inputs`` (tests/reliability/test_catalogue.py).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    id: str
    argv: tuple
    expect: str  # a fragment of the one line on stderr (case-insensitive)


def _entries(*rows):
    return [Entry(id, tuple(argv.split()), expect) for id, argv, expect in rows]


_TO_MEGATRON = "--from diffusers --to megatron --no-progress --output {out}"

CONVERT = _entries(
    ("unknown-flag", "--from diffusers --to megatron --input {teacher} --output {out} --tp 2", "unrecognized arguments"),
    ("misspelt-flag", "--from diffusers --to megatron --input {teacher} --output {out} --overwite", "unrecognized"),
    ("unknown-source-format", "--from safetensors --to megatron --input {teacher} --output {out}", "invalid choice"),
    ("unknown-target-format", "--from diffusers --to onnx --input {teacher} --output {out}", "invalid choice"),
    ("unknown-dtype", f"{_TO_MEGATRON} --input {{teacher}} --dtype float8", "invalid choice"),
    ("missing-output-flag", "--from diffusers --to megatron --input {teacher}", "--output"),
    ("same-source-and-target", "--from diffusers --to diffusers --no-progress --input {teacher} --output {out}",
     "both diffusers"),
    ("tp-size-zero", f"{_TO_MEGATRON} --input {{teacher}} --tensor-parallel-size 0", "integer >= 1"),
    ("tp-size-not-dividing", f"{_TO_MEGATRON} --input {{teacher}} --tensor-parallel-size 3", "divide"),
    ("tp-size-not-an-integer", f"{_TO_MEGATRON} --input {{teacher}} --tensor-parallel-size 1.5", "integer >= 1"),
    ("tp-size-for-diffusers-output", "--from megatron --to diffusers --no-progress --input {megatron} "
     "--output {out} --tensor-parallel-size 2", "only to a megatron output"),
    ("input-missing", f"{_TO_MEGATRON} --input {{missing}}", "no config.json"),
    ("input-empty-folder", f"{_TO_MEGATRON} --input {{empty}}", "no config.json"),
    ("output-folder-exists", f"{_TO_MEGATRON} --input {{teacher}} --output {{existing_dir}}", "exists"),
    ("output-is-a-file", f"{_TO_MEGATRON} --input {{teacher}} --output {{existing_file}}", "exists"),
    ("truncated-safetensors", f"{_TO_MEGATRON} --input {{truncated}}", "safetensors"),
    ("random-byte-safetensors", f"{_TO_MEGATRON} --input {{random_bytes}}", "safetensors"),
    ("malformed-config-json", f"{_TO_MEGATRON} --input {{malformed_json}}", "config.json"),
    ("config-of-another-model-class", f"{_TO_MEGATRON} --input {{other_class}}", "UNet2DConditionModel"),
    ("missing-tensor", f"{_TO_MEGATRON} --input {{missing_key}}", "missing keys"),
    ("unexpected-tensor", f"{_TO_MEGATRON} --input {{extra_key}}", "unexpected keys"),
    ("wrong-tensor-shape", f"{_TO_MEGATRON} --input {{wrong_shape}}", "shapes disagree"),
    ("pickle-pt-file", "--from wan --to diffusers --no-progress --input {pickle_pt} --output {out}",
     "weights_only"),
    ("random-byte-pth", "--from wan --to diffusers --no-progress --input {random_pth} --output {out}",
     "not a readable torch state dict"),  # which error the random bytes raise varies; the message's start does not
    ("not-a-megatron-checkpoint", "--from megatron --to diffusers --no-progress --input {teacher} --output {out}",
     "not a Megatron distributed checkpoint"),
    ("unknown-megatron-prefix", "--from megatron --to diffusers --no-progress --input {megatron} --output {out} "
     "--megatron-prefix nope.", "no model with prefix"),
    ("pipeline-export-without-base", "--from diffusers --to diffusers-pipeline --no-progress --input {teacher} "
     "--output {out}", "needs --pipeline"),
)

_TRAIN = "--config {tiny_config} --teacher {teacher} --data-path {data} --negative-prompt-embedding {negative}"

PRETRAIN = _entries(
    ("no-arguments", "", "--teacher is required"),
    ("unknown-flag", f"{_TRAIN} --tensor-parallel 2", "unrecognized arguments"),
    ("abbreviated-flag", f"{_TRAIN} --train-it 3", "unrecognized arguments"),
    ("flag-not-an-integer", f"{_TRAIN} --train-iters 2.5", "invalid int"),
    ("config-file-missing", _TRAIN.replace("{tiny_config}", "{missing}"), "does not exist"),
    ("malformed-yaml", _TRAIN.replace("{tiny_config}", "{malformed_yaml}"), "not valid YAML"),
    ("yaml-not-a-mapping", _TRAIN.replace("{tiny_config}", "{list_yaml}"), "expected a mapping"),
    ("yaml-unknown-key", _TRAIN.replace("{tiny_config}", "{unknown_key_yaml}"), "unknown keys"),
    ("yaml-float-for-integer", _TRAIN.replace("{tiny_config}", "{float_iters_yaml}"), "train_iters"),
    ("yaml-string-for-number", _TRAIN.replace("{tiny_config}", "{string_lr_yaml}"), "lr"),
    ("yaml-bad-choice", _TRAIN.replace("{tiny_config}", "{bad_choice_yaml}"), "cp_comm_type"),
    ("train-iters-zero", f"{_TRAIN} --train-iters 0", "must be positive"),
    ("tp-size-zero", f"{_TRAIN} --tensor-model-parallel-size 0", "tensor"),
    ("tp-size-not-dividing-world", f"{_TRAIN} --tensor-model-parallel-size 2", "divide"),
    ("global-batch-mismatch", f"{_TRAIN} --global-batch-size 3", "--global-batch-size 3"),
    ("seed-zero", f"{_TRAIN} --seed 0", "--seed"),
    ("negative-workers", f"{_TRAIN} --num-workers -1", "--num-workers"),
    ("bf16-on-cpu", f"{_TRAIN} --bf16", "on CPU pass --no-bf16"),
    ("guidance-without-negative", _TRAIN.replace("--negative-prompt-embedding {negative}", ""),
     "needs --negative-prompt-embedding"),
    ("save-interval-without-save", f"{_TRAIN} --save-interval 2", "needs --save"),
    ("save-is-a-file", f"{_TRAIN} --save {{existing_file}}", "not a folder"),
    ("teacher-missing", _TRAIN.replace("{teacher}", "{missing}"), "does not exist"),
    ("teacher-malformed-config", _TRAIN.replace("{teacher}", "{malformed_json}"), "config.json"),
    ("teacher-of-another-class", _TRAIN.replace("{teacher}", "{other_class}"), "UNet2DConditionModel"),
    ("teacher-truncated-weights", _TRAIN.replace("{teacher}", "{truncated}"), "safetensors"),
    ("data-path-missing", _TRAIN.replace("{data}", "{missing}"), "no .tar shards"),
    ("data-folder-without-shards", _TRAIN.replace("{data}", "{empty}"), "no .tar shards"),
    ("random-byte-shard", _TRAIN.replace("{data}", "{random_shard_dir}"), "not a readable tar file"),
    ("shard-cut-at-a-sample-boundary", _TRAIN.replace("{data}", "{truncated_shard_dir}"), "is truncated"),
    ("negative-embedding-missing", _TRAIN.replace("{negative}", "{missing}"), "negative"),
    ("negative-embedding-wrong-shape", _TRAIN.replace("{negative}", "{negative_wrong_shape}"), "must be a tensor"),
    ("negative-embedding-pickle", _TRAIN.replace("{negative}", "{pickle_pt}"), "weights_only"),
    ("load-without-checkpoint", f"{_TRAIN} --load {{empty}}", "no checkpoint"),
    ("keep-attention-without-full-recompute", f"{_TRAIN} --recompute-keep-attention",
     "needs --recompute-granularity full"),
    ("recompute-more-blocks-than-the-model", f"{_TRAIN} --recompute-granularity full --recompute-method block "
     "--recompute-num-layers 99", "between 1 and the model's 2 layers, got 99"),
    ("fake-score-recompute-without-block", f"{_TRAIN} --fake-score-recompute-num-layers 1",
     "needs --recompute-granularity full --recompute-method block"),
    ("recompute-count-not-an-integer", f"{_TRAIN} --recompute-num-layers two", "invalid int"),
    ("dcm-step-negative", f"{_TRAIN} --dcm-step -0.1", "dcm_step must be >= 0"),
    ("dcm-step-not-a-number", f"{_TRAIN} --dcm-step abc", "invalid float"),
    ("guidance-scale-nan", f"{_TRAIN} --guidance-scale nan", "guidance_scale must be a finite number"),
    ("lr-negative", f"{_TRAIN} --lr -1", "lr must be >= 0"),
    ("adam-beta-of-one-or-more", f"{_TRAIN} --adam-beta2 1.5", "adam_beta2 must be >= 0 and < 1"),
    ("ema-std-zero", f"{_TRAIN} --ema-std 0", "ema_std must be > 0"),
    ("keep-last-zero", f"{_TRAIN} --keep-last 0", "keep_last must be >= 1"),
    ("log-interval-zero", f"{_TRAIN} --log-interval 0", "log_interval must be >= 1"),
    ("save-under-a-file", f"{_TRAIN} --save {{existing_file}}/run", "is a file, not a folder"),
    ("log-jsonl-is-a-folder", f"{_TRAIN} --log-jsonl {{empty}}", "exists and is not a file"),
    ("teacher-empty-folder", _TRAIN.replace("{teacher}", "{empty}"), "neither a Megatron distributed checkpoint"),
)

# (id, expect) of the load_model cases; tests/reliability/load_model_cases.py builds the calls
LOAD_MODEL = [
    ("path-missing", "does not exist"),
    ("empty-folder", "neither"),
    ("malformed-config-json", "config.json"),
    ("config-of-another-model-class", "UNet2DConditionModel"),
    ("truncated-safetensors", "safetensors"),
    ("random-byte-safetensors", "safetensors"),
    ("missing-tensor", "missing"),
    ("wrong-tensor-shape", "shape"),
    ("distributed-checkpoint-outside-parallel-context", "parallel_context"),
    ("unknown-model-prefix", "recorded models"),
    ("tracker-names-missing-iteration", "missing or incomplete"),
    ("unknown-config-override", "unknown"),
]

GENERATE = _entries(
    ("unknown-flag", "--pipeline {empty} --checkpoint {teacher} --prompt x --output {out} --stpes 2",
     "unrecognized arguments"),
    ("steps-not-an-integer", "--pipeline {empty} --checkpoint {teacher} --prompt x --output {out} --steps two",
     "invalid int"),
    ("pipeline-folder-without-vae", "--pipeline {empty} --checkpoint {teacher} --prompt x --output {out}", "vae"),
)

PREPARE_DATA = _entries(
    ("unknown-flag", "--pipeline {empty} --videos {empty} --output {out} --frames 5", "unrecognized arguments"),
    ("two-sources", "--pipeline {empty} --videos {empty} --prompts {existing_file} --output {out}",
     "not allowed with"),
    ("pipeline-folder-without-vae", "--pipeline {empty} --videos {empty} --output {out} --height 16 --width 16 "
     "--num-frames 5", "vae"),
)

PLAN = _entries(
    ("unknown-model", "--model wan9b --gpus 8 --gpu-memory-gib 80", "invalid choice"),
    ("gpus-not-an-integer", "--model wan2.1-t2v-1.3b --gpus eight --gpu-memory-gib 80", "invalid int"),
    ("missing-gpus", "--model wan2.1-t2v-1.3b --gpu-memory-gib 80", "--gpus"),
)
