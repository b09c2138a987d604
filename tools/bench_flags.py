"""Flags that several benchmark, profiling and tuning tools share, and the checks of their values
that argparse's types cannot make alone. Tools import it as ``from bench_flags import ...`` (tools/
is their directory).

Only argparse and ``megatron_rcm.cli`` at import: a wrong flag is refused in a fraction of a second,
before torch or megatron-core loads (``preset_family``, which needs the model presets, imports them
when it is called).
"""

import argparse
import os
from pathlib import Path

from megatron_rcm import cli

TEXT_TOKENS = 512  # the token ids a prompt is padded to, as the Wan and Cosmos pipelines pad them


def output_file(text):
    """argparse type: a file written when the run ends, in a folder that exists now (not only after
    the run's GPU time has been spent)."""
    folder = Path(text).parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(folder)!r} of {text!r} does not exist")
    return Path(text)


def input_file(text):
    """argparse type: a file that exists now."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return Path(text)


def names_of(known, what):
    """argparse type: comma-separated names, each a key of ``known``; the text back as given."""
    def parse(text):
        unknown = [name for name in text.split(",") if name not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {list(known)}")
        return text
    return parse


def _prompt_tokens(text):
    value = cli.positive_int(text)
    if value > TEXT_TOKENS:
        raise argparse.ArgumentTypeError(f"expected at most {TEXT_TOKENS} (the padded prompt length), got {text!r}")
    return value


def add_prompt_flags(parser):
    """--prompt-tokens and --guidance-scale: the prompt a text encoder and a teacher with CFG are timed on."""
    parser.add_argument("--prompt-tokens", type=_prompt_tokens, default=40,
                        help=f"unmasked tokens of the {TEXT_TOKENS} token ids a prompt is padded to, 1 to "
                             f"{TEXT_TOKENS} (default: %(default)s)")
    parser.add_argument("--guidance-scale", type=cli.positive_float, default=5.0,
                        help="the teacher's classifier-free guidance scale (default: %(default)s)")


def add_parallel_flags(parser, comm_flag="--cp-mode"):
    """--tp, --cp and the context-parallel communication flag (named ``comm_flag``)."""
    parser.add_argument("--tp", type=cli.positive_int, default=1, help="tensor-parallel size (default: %(default)s)")
    parser.add_argument("--cp", type=cli.positive_int, default=1, help="context-parallel size (default: %(default)s)")
    parser.add_argument(comm_flag, choices=("a2a", "p2p"), default="a2a",
                        help="context-parallel communication: a2a (all-to-all) or p2p (ring) (default: %(default)s)")


def world_size():
    """The processes of this run: torchrun's WORLD_SIZE, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_parallel(parser, args, processes, launcher, sequence_flag=None):
    """One line for sequence parallelism without TP (``sequence_flag``: the flag that turned it on,
    None if off) and for --tp x --cp that does not divide the ``processes`` that ``launcher`` starts."""
    if sequence_flag and args.tp == 1:
        parser.error(f"{sequence_flag} needs --tp > 1 (it splits the activations over the tensor-parallel ranks)")
    if processes % (args.tp * args.cp):
        parser.error(f"--tp {args.tp} x --cp {args.cp} needs a multiple of {args.tp * args.cp} processes "
                     f"({launcher}), not {processes}")


def preset_family(parser, preset):
    """The model family with the preset ``preset`` (any family's); one line if none has it."""
    from megatron_rcm.models import family_of_preset

    try:
        return family_of_preset(preset)
    except ValueError as error:
        parser.error(f"--preset: {error}")
