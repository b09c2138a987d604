#!/usr/bin/env python
"""Prepare training shards for examples/pretrain_rcm.py with the VAE and text encoder of a diffusers
pipeline folder: Wan2.1 (UMT5; e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers) or Cosmos-Predict2
text-to-image (T5; e.g. nvidia/Cosmos-Predict2-2B-Text2Image), which both use the Wan VAE.

Videos with captions (NAME.mp4/.webm/.mov/.gif beside NAME.txt, or a --manifest JSONL of
{"video": path, "caption": text}):
    python tools/prepare_data.py --pipeline Wan2.1-T2V-1.3B-Diffusers --videos clips/ --output data/ \\
        --height 480 --width 832 --num-frames 81 [--dtype bfloat16] [--samples-per-shard 64]
Images with captions (NAME.png/.jpg beside NAME.txt; an image is a video of one frame, latents [C, 1, h, w]):
    python tools/prepare_data.py --pipeline Cosmos-Predict2-2B-Text2Image --images photos/ --output data/ \\
        --height 768 --width 1360
Teacher samples of a prompt list (one prompt a line), with CFG and the teacher's multi-step sampler:
    python tools/prepare_data.py --pipeline P --prompts prompts.txt --teacher P --output data/ \\
        --height 480 --width 832 --num-frames 81 [--steps 50 --guidance-scale 5 --sampler unipc --shift 3]
The negative-prompt embedding alone (without TEXT: the family's default negative prompt):
    python tools/prepare_data.py --pipeline P --negative-prompt [TEXT] --output negative.pt

Data modes also write OUTPUT/negative_prompt.pt (for --negative-prompt-embedding), OUTPUT/skipped.jsonl
(every item left out or truncated, with the reason) and OUTPUT/prepare.json (the settings). Under
torchrun or srun each data-parallel rank prepares its own shards (teacher mode: TP/CP groups with
--tensor-model-parallel-size / --context-parallel-size). Re-running a command resumes it; a non-empty
--output that this tool did not write (no prepare.json) is refused, as is replacing a .pt that holds no
embedding.
Exit status: 0 when every item became a sample, 3 when some were skipped (--strict: 1 at the first),
1 on bad input (one line on stderr; --debug shows the traceback).
"""

import argparse
import io
import sys
from pathlib import Path

import torch

EXIT_SKIPPED = 3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    from megatron_rcm import cli
    from megatron_rcm.generation import seed_int

    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="diffusers WanPipeline or Cosmos2TextToImagePipeline folder "
                   "with vae/, text_encoder/, tokenizer/")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--videos", "--images", dest="videos", metavar="DIR", help="folder of videos and/or images (png, jpg), "
                        "each with its caption NAME.txt beside it")
    source.add_argument("--manifest", help='JSONL file of {"video": path, "caption": text} lines')
    source.add_argument("--prompts", help="text file of prompts, one a line, for the teacher to sample")
    p.add_argument("--output", required=True, help="shard folder (data modes) or .pt file (negative prompt alone)")
    p.add_argument("--height", type=int, help="pixels; videos are resized (short side) and centre-cropped")
    p.add_argument("--width", type=int)
    p.add_argument("--num-frames", type=int, help="frames from the start of each video: 1 + 4k (81 for Wan2.1; "
                   "an image pipeline takes 1, its default)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="encoders' and teacher's dtype (default: float32)")
    p.add_argument("--samples-per-shard", type=int, default=64, help="samples per tar shard (default: 64)")
    p.add_argument("--vae-tiling", action="store_true", help="encode in spatial tiles (less memory at 720p)")
    p.add_argument("--negative-prompt", nargs="?", help="negative prompt to embed (default and without TEXT: the "
                   "family's: Wan2.1's own, or Cosmos2TextToImagePipeline's DEFAULT_NEGATIVE_PROMPT)")
    p.add_argument("--strict", action="store_true", help="stop with an error at the first item that is skipped")
    teacher = p.add_argument_group("teacher samples (--prompts)")
    teacher.add_argument("--teacher", help="teacher: diffusers transformer or pipeline folder, or Megatron checkpoint")
    teacher.add_argument("--steps", type=int, default=50, help="sampler steps per sample (default: 50)")
    teacher.add_argument("--guidance-scale", type=cli.positive_float, help="CFG scale (default: the pipeline's, 5 "
                         "for Wan2.1, 7 for Cosmos)")
    teacher.add_argument("--sampler", choices=("unipc", "euler"), default="unipc",
                         help="the teacher's multi-step sampler (default: unipc)")
    teacher.add_argument("--shift", type=cli.positive_float, default=3.0,
                         help="RF time shift (Wan2.1: 3 at 480p, 5 at 720p; default: 3)")
    teacher.add_argument("--seed", type=seed_int, default=0,
                         help="sample i draws its noise with seed + i (default: 0)")
    teacher.add_argument("--tensor-model-parallel-size", type=int, default=1,
                         help="ranks that split the teacher's weights (default: 1)")
    teacher.add_argument("--context-parallel-size", type=int, default=1,
                         help="ranks that split each sample's tokens (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_debug_flag(p)
    return p.parse_args(argv)


def _check_flags(args, kind):
    """Fills the flags left out with the pipeline ``kind``'s defaults; raises if a needed one is missing."""
    from megatron_rcm.data.prepare import PrepareError

    if args.negative_prompt is None:
        args.negative_prompt = kind.negative_prompt
    if args.guidance_scale is None:
        args.guidance_scale = kind.guidance_scale
    data_mode = args.videos or args.manifest or args.prompts
    if not data_mode:
        return
    if kind.image:
        if args.num_frames not in (None, 1):
            raise PrepareError(f"--num-frames {args.num_frames}: a {kind.pipeline_class} folder's model makes "
                               "images; pass --num-frames 1 or leave it out")
        args.num_frames = 1
    missing = [flag for flag, value in (("--height", args.height), ("--width", args.width),
                                        ("--num-frames", args.num_frames)) if value is None]
    if args.prompts and not args.teacher:
        missing.append("--teacher")
    if missing:
        raise PrepareError(f"{' '.join(missing)} needed to prepare shards")
    if args.teacher and not args.prompts:
        raise PrepareError("--teacher samples the prompts of --prompts; pass --prompts FILE")
    if args.samples_per_shard < 1:
        raise PrepareError(f"--samples-per-shard must be positive, got {args.samples_per_shard}")
    if args.prompts and args.steps < 1:
        raise PrepareError(f"--steps must be positive, got {args.steps}")


def _items(args):
    from megatron_rcm.data import prepare

    if args.videos:
        return prepare.list_videos(args.videos)
    if args.manifest:
        return prepare.list_manifest(args.manifest)
    return prepare.list_prompts(args.prompts)


def _check_size(args, patch_size, max_patches=None):
    """Raises unless the pipeline's VAE gives latents of this video size that ``patch_size`` divides
    (and that fit a model of ``max_patches``)."""
    from megatron_rcm.encoders import vae_geometry
    from megatron_rcm.generation import VideoSize

    _, spatial_stride, temporal_stride = vae_geometry(args.pipeline)
    VideoSize(args.num_frames, args.height, args.width).check(spatial_stride, temporal_stride, patch_size,
                                                              max_patches)


def _pipeline_patch_size(pipeline):
    """The patch size of the pipeline's transformer, which latents for it must divide into."""
    import json

    config = Path(pipeline) / "transformer" / "config.json"
    return tuple(json.loads(config.read_text())["patch_size"]) if config.is_file() else (1, 1, 1)


def _settings(args, items):
    from megatron_rcm.data.prepare import items_digest

    settings = dict(pipeline=str(Path(args.pipeline).resolve()), height=args.height, width=args.width,
                    num_frames=args.num_frames, dtype=args.dtype, samples_per_shard=args.samples_per_shard,
                    negative_prompt=args.negative_prompt, items=items_digest(items))
    if args.prompts:
        settings.update(teacher=str(Path(args.teacher).resolve()), steps=args.steps, sampler=args.sampler,
                        guidance_scale=args.guidance_scale, shift=args.shift, seed=args.seed)
    return settings


def _save_tensor(path, tensor):
    from megatron_rcm.atomic_output import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(tensor.detach().cpu().clone(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _plan(args, items, is_rank0):
    """Rank 0 records or checks the settings and lists the pending shards; every rank gets the list."""
    import torch.distributed as dist

    from megatron_rcm.data.prepare import PrepareError, check_settings, pending_shards

    message = [None, None]
    if is_rank0:
        try:
            check_settings(args.output, _settings(args, items))
            message[0] = pending_shards(args.output, len(items), args.samples_per_shard)
        except PrepareError as e:
            message[1] = str(e)
        except OSError as e:
            message[1] = _unwritable(args, e)
    dist.broadcast_object_list(message, src=0)
    if message[1] is not None:
        raise PrepareError(message[1])
    return message[0]


def _unwritable(args, error):
    return f"--output {args.output} cannot be written ({error})"


def _load_teacher(args, load, **kwargs):
    """``load(args.teacher, **kwargs)`` (the model, or its config); what holds no model names --teacher."""
    from megatron_rcm.data.prepare import PrepareError

    try:
        return load(args.teacher, **kwargs)
    except (OSError, ValueError) as e:
        raise PrepareError(f"--teacher: {e}") from None


def _teacher_samples(args, text_encoder, negative, device):
    from megatron_rcm import load_model
    from megatron_rcm.data.prepare import PrepareError, TeacherSamples
    from megatron_rcm.encoders import vae_geometry
    from megatron_rcm.generation import SamplingConfig, VideoSize

    model = _load_teacher(args, load_model, params_dtype=DTYPES[args.dtype]).to(device).eval()
    channels, spatial_stride, temporal_stride = vae_geometry(args.pipeline)
    if model.config.in_channels != channels or model.config.text_dim != text_encoder.text_dim:
        raise PrepareError(f"--teacher takes {model.config.in_channels} latent channels and text dim "
                           f"{model.config.text_dim}; --pipeline's VAE gives {channels} and its text "
                           f"encoder {text_encoder.text_dim}")
    config = SamplingConfig(teacher_steps=args.steps, guidance_scale=args.guidance_scale,
                            teacher_sampler=args.sampler, shift=args.shift)
    shape = VideoSize(args.num_frames, args.height, args.width).latent_shape(channels, spatial_stride,
                                                                             temporal_stride)[1:]
    return TeacherSamples(model, text_encoder, config, shape, negative, args.seed)


def _parallel_config(args):
    """The TP/CP sizes, checked against the world size; a misfit is a PrepareError (so that main
    need not import megatron-core to report it)."""
    from megatron_rcm.data.prepare import PrepareError
    from megatron_rcm.parallel import ParallelConfig, ParallelSizeError, launch_env

    try:
        config = ParallelConfig(tensor_model_parallel_size=args.tensor_model_parallel_size,
                                context_parallel_size=args.context_parallel_size)
        config.data_parallel_size(launch_env().world_size)
    except ParallelSizeError as e:
        raise PrepareError(str(e)) from None
    return config


def _prepare(args, items):
    from megatron.core import parallel_state as ps
    from tqdm import tqdm

    from megatron_rcm.data.prepare import NEGATIVE_FILE, VideoSamples, num_shards, prepare_shard, shard_items
    from megatron_rcm.encoders import load_text_encoder, load_vae
    from megatron_rcm.parallel import current_device, parallel_context

    with parallel_context(_parallel_config(args)):
        import torch.distributed as dist

        is_rank0 = dist.get_rank() == 0
        pending = _plan(args, items, is_rank0)
        device, dtype = current_device(), DTYPES[args.dtype]
        text_encoder = load_text_encoder(args.pipeline, dtype=dtype, device=device)
        negative = text_encoder.encode([args.negative_prompt])[0].cpu()
        if args.prompts:
            make_sample = _teacher_samples(args, text_encoder, negative, device)
        else:
            vae = load_vae(args.pipeline, dtype=dtype, device=device, tiling=args.vae_tiling)
            make_sample = VideoSamples(vae, text_encoder, (args.num_frames, args.height, args.width))
        if is_rank0:
            _save_tensor(Path(args.output) / NEGATIVE_FILE, negative)
        mine = pending[ps.get_data_parallel_rank()::ps.get_data_parallel_world_size()]
        writer = ps.get_tensor_model_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0
        per_shard = args.samples_per_shard
        with tqdm(total=sum(len(shard_items(items, s, per_shard)) for s in mine), unit="item",
                  disable=args.no_progress or not is_rank0, desc=f"rank 0 of {dist.get_world_size()}") as bar:
            for shard in mine:
                prepare_shard(args.output, shard, shard_items(items, shard, per_shard), make_sample, args.strict,
                              writer, tick=lambda: bar.update(1))
        dist.barrier()
        return is_rank0, num_shards(len(items), per_shard) - len(pending)


def _report(args, items, done_before):
    from megatron_rcm.data.prepare import REPORT_FILE, summarize

    summary = summarize(args.output, len(items), args.samples_per_shard)
    resumed = f" ({done_before} shards were done before this run)" if done_before else ""
    print(f"wrote {summary['written']} of {len(items)} samples to {args.output}{resumed}; "
          f"{summary['truncated']} captions truncated, {summary['skipped']} items skipped")
    for reason, count in summary["reasons"].most_common():
        print(f"  skipped {count}: {reason}")
    if summary["skipped"] or summary["truncated"]:
        print(f"  each one is listed in {Path(args.output) / REPORT_FILE}")
    return EXIT_SKIPPED if summary["skipped"] else 0


def _check_negative_output(path):
    """The negative-prompt mode replaces only what it writes (a re-run rewrites it): a file holding one
    tensor [L, D]. Anything else at --output (a checkpoint, other data) is refused before any work."""
    from megatron_rcm.data.prepare import PrepareError

    path = Path(path)
    if not path.exists():
        return
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch.load fails in many ways on what it did not write (pickle, zip, I/O errors)
        tensor = None
    if not (isinstance(tensor, torch.Tensor) and tensor.dim() == 2):
        raise PrepareError(f"--output {path} exists and is not a negative-prompt embedding (one tensor [L, D]); "
                           "pass a new --output or remove it")


def _negative_only(args):
    from megatron_rcm.data.prepare import PrepareError
    from megatron_rcm.encoders import load_text_encoder

    text_encoder = load_text_encoder(args.pipeline, dtype=DTYPES[args.dtype])
    try:
        _save_tensor(args.output, text_encoder.encode([args.negative_prompt])[0])
    except OSError as e:
        raise PrepareError(_unwritable(args, e)) from None
    print(f"wrote the negative-prompt embedding [{text_encoder.max_length}, {text_encoder.text_dim}] to {args.output}")
    return 0


def run(args):
    from megatron_rcm.data.prepare import PrepareError
    from megatron_rcm.encoders import check_pipeline_folder, pipeline_kind

    data_mode = args.videos or args.manifest or args.prompts
    if not data_mode and not args.output.endswith(".pt"):
        raise PrepareError("pass --videos, --manifest or --prompts to prepare shards, or --output FILE.pt to "
                           "write the negative-prompt embedding alone")
    check_pipeline_folder(args.pipeline, ["vae", "text_encoder", "tokenizer"] if data_mode else
                          ["text_encoder", "tokenizer"])
    _check_flags(args, pipeline_kind(args.pipeline))
    if data_mode:  # the cheap checks first: a bad command fails before the heavy imports
        items = _items(args)
        _check_size(args, (1, 1, 1) if args.prompts else _pipeline_patch_size(args.pipeline))
        if args.prompts:  # before the output folder records the settings: a teacher that takes this size
            from megatron_rcm.loading import load_model_config

            teacher = _load_teacher(args, load_model_config)
            _check_size(args, teacher.patch_size, teacher.max_patches())
    else:
        _check_negative_output(args.output)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars: stderr is for errors
    if not data_mode:
        return _negative_only(args)
    is_rank0, done_before = _prepare(args, items)
    return _report(args, items, done_before) if is_rank0 else 0


def main(argv=None):
    from megatron_rcm import cli
    from megatron_rcm.data.prepare import PrepareError
    from megatron_rcm.encoders import PipelineFolderError
    from megatron_rcm.generation import GenerationError

    args = parse_args(argv)
    with cli.one_line_errors("prepare_data", (PrepareError, PipelineFolderError, GenerationError, OSError),
                             args.debug):
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
