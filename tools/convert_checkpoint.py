#!/usr/bin/env python
"""Convert Wan2.1 T2V checkpoints between a diffusers folder, Wan's native release and a Megatron
distributed checkpoint (loadable at any tensor/context-parallel size).

    python tools/convert_checkpoint.py --from diffusers --to megatron --input Wan2.1-T2V-1.3B-Diffusers/transformer \\
        --output wan13b-megatron --tensor-parallel-size 2
    python tools/convert_checkpoint.py --from wan --to megatron --input Wan2.1-T2V-14B --output wan14b-megatron --dtype bf16
    python tools/convert_checkpoint.py --from megatron --to diffusers --input runs/x/iter_0001000 --megatron-prefix ema. \\
        --output student-diffusers --verify
    python tools/convert_checkpoint.py --from megatron --to diffusers-pipeline --pipeline Wan2.1-T2V-1.3B-Diffusers \\
        --input runs/x/ema_student --output wan13b-rcm-pipeline   # a complete few-step WanPipeline folder

Streams tensor by tensor (host memory bounded by a few tensors), checks every key and shape, and
writes the output folder atomically. Exits non-zero with a one-line reason on bad input.
"""

import argparse
import contextlib
import os
import sys
from pathlib import Path

import torch

from megatron_rcm import cli
from megatron_rcm.convert.api import (FORMATS, ConversionRequestError, convert_checkpoint, detect_format,
                                     open_checkpoint)
from megatron_rcm.convert.diffusers_pipeline import write_diffusers_pipeline
from megatron_rcm.convert.tensor_files import CheckpointFileError, unreadable
from megatron_rcm.convert.wan_keys import UnknownKeyError
from megatron_rcm.convert.wan_native import ConfigMismatchError
from megatron_rcm.encoders import PipelineFolderError
from megatron_rcm.atomic_output import OutputExistsError, OutputPathError
from megatron_rcm.loading import recorded_sampler
from megatron_rcm.save_folder import CheckpointNotFoundError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
INPUT_ERRORS = (CheckpointFileError, CheckpointNotFoundError, ConfigMismatchError, ConversionRequestError,
                UnknownKeyError, OutputPathError, PipelineFolderError)
PIPELINE = "diffusers-pipeline"


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", choices=FORMATS,
                        help="input format (default: detected from --input: a Megatron checkpoint or save folder, a "
                             "diffusers model folder, else Wan native files)")
    parser.add_argument("--to", dest="target", required=True, choices=(*FORMATS, PIPELINE),
                        help=f"{PIPELINE}: the input as the transformer of a complete WanPipeline folder for "
                             "few-step sampling, with --pipeline's VAE, text encoder and tokenizer")
    parser.add_argument("--pipeline", help=f"--to {PIPELINE}: the base diffusers Wan2.1 folder")
    parser.add_argument("--input", required=True, help="checkpoint folder, .safetensors, .pt or .pth")
    parser.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--tensor-parallel-size", type=cli.positive_int, default=1,
                        help="megatron output: chunk tensors as this many TP ranks hold them (loads at any size)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating-point tensors (default: keep)")
    parser.add_argument("--megatron-prefix", help="megatron input recording several models: the one to export")
    parser.add_argument("--verify", action="store_true",
                        help="run the input and output models in float64 on a random input and report the difference")
    parser.add_argument("--verify-layers", type=cli.positive_int,
                        help="verify with only the first N blocks (large models; at most the model's layer count)")
    parser.add_argument("--overwrite", "--force", action="store_true",
                        help="replace an existing output folder atomically")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    cli.interrupt_on_signals()  # Ctrl-C or a kill removes the temporary output, whatever catches the interrupt
    with cli.one_line_errors("convert_checkpoint", INPUT_ERRORS, args.debug), _path_errors(args):
        if os.path.realpath(args.output) == os.path.realpath(args.input):  # --overwrite would replace the input
            raise ConversionRequestError(f"--output {args.output} is the --input; write the conversion to another path")
        args.source = args.source or detect_format(args.input)
        if args.verify_layers:
            _check_verify_layers(args)
        if args.target == PIPELINE:
            _export_pipeline(args)
        else:
            convert_checkpoint(args.source, args.target, args.input, args.output, args.tensor_parallel_size,
                               DTYPES.get(args.dtype), args.overwrite, not args.no_progress, args.megatron_prefix)
        print(f"wrote {args.output}")
        if args.verify or args.verify_layers:
            _verify(args)
    return 0


@contextlib.contextmanager
def _path_errors(args):
    """OSErrors on the paths the flags name (no permission, a file where a folder belongs) as one line
    naming the path; any other OSError is a bug and keeps its traceback."""
    try:
        yield
    except OutputExistsError as e:
        if not os.path.isdir(args.output):  # a file: replacing it would be a mistake, and is refused
            raise OutputPathError(f"--output {e}") from e
        raise OutputExistsError(f"--output {args.output} exists; choose another output path, or pass --overwrite "
                                "to replace it") from e
    except OutputPathError as e:  # its message starts with the path
        raise OutputPathError(f"--output {e}") from e
    except OSError as e:
        if not any(_holds(value, e.filename) for value in (args.input, args.pipeline)):
            raise
        raise unreadable(e.filename, e) from e


def _holds(value, filename):
    """Whether the path ``value`` is ``filename``, or a folder above it (a file: its folder, where its
    config.json lies)."""
    if value is None or not isinstance(filename, (str, os.PathLike)):
        return False
    root = os.path.abspath(value)
    root = os.path.dirname(root) if os.path.isfile(root) else root
    return Path(os.path.abspath(filename)).is_relative_to(root)


def _check_verify_layers(args):
    layers = open_checkpoint(args.source, args.input, args.megatron_prefix).config["num_layers"]
    if args.verify_layers > layers:
        raise ConversionRequestError(f"--verify-layers {args.verify_layers} exceeds the model's {layers} layers")


def _verify(args):
    from megatron_rcm.convert.verify import verify_conversion

    target, output = ("diffusers", f"{args.output}/transformer") if args.target == PIPELINE else \
        (args.target, args.output)
    error = verify_conversion(args.source, args.input, target, output, args.verify_layers, args.megatron_prefix)
    print(f"verify: max relative difference of the outputs {error:.3e}")


def _export_pipeline(args):
    if not args.pipeline:
        raise ConversionRequestError(f"--to {PIPELINE} needs --pipeline BASE (a diffusers Wan2.1 folder)")
    if os.path.isfile(args.pipeline):
        raise ConversionRequestError(f"--pipeline {args.pipeline} is a file: pass the pipeline folder "
                                     f"({os.path.dirname(args.pipeline) or '.'})")
    if args.tensor_parallel_size != 1:
        raise ConversionRequestError("--tensor-parallel-size applies only to a megatron output")
    tensors = open_checkpoint(args.source, args.input, args.megatron_prefix)
    sampler = recorded_sampler(args.input) if args.source == "megatron" else {}
    write_diffusers_pipeline(tensors, args.pipeline, args.output, DTYPES.get(args.dtype), args.overwrite,
                             not args.no_progress, **sampler)


if __name__ == "__main__":
    sys.exit(main())
