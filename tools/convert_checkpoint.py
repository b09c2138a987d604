#!/usr/bin/env python
"""Convert Wan2.1 T2V checkpoints between Wan's native release layout and a diffusers folder.

    python tools/convert_checkpoint.py --from wan --to diffusers --input Wan2.1-T2V-1.3B --output wan13b-diffusers
    python tools/convert_checkpoint.py --from diffusers --to wan --input student-diffusers --output student-wan --dtype bf16

Streams tensor by tensor (host memory bounded by the largest tensor), checks every key and
shape, and writes the output folder atomically. Exits non-zero with a one-line reason on bad input.
"""

import argparse
import sys

import torch

from megatron_rcm.convert.tensor_files import CheckpointFileError
from megatron_rcm.convert.wan_keys import UnknownKeyError
from megatron_rcm.convert.wan_native import ConfigMismatchError, convert_diffusers_to_native, convert_native_to_diffusers
from megatron_rcm.fs import OutputExistsError

CONVERTERS = {("wan", "diffusers"): convert_native_to_diffusers, ("diffusers", "wan"): convert_diffusers_to_native}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, choices=["wan", "diffusers"])
    parser.add_argument("--to", dest="target", required=True, choices=["wan", "diffusers"])
    parser.add_argument("--input", required=True, help="checkpoint folder, .safetensors, .pt or .pth")
    parser.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating-point tensors (default: keep)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder atomically")
    args = parser.parse_args(argv)
    if (args.source, args.target) not in CONVERTERS:
        parser.error(f"no conversion from {args.source} to {args.target}")
    try:
        CONVERTERS[args.source, args.target](args.input, args.output, dtype=DTYPES.get(args.dtype),
                                             overwrite=args.overwrite)
    except (CheckpointFileError, ConfigMismatchError, UnknownKeyError, OutputExistsError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
