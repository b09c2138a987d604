#!/usr/bin/env python
"""Text to video or image with a distilled rCM student in 1-4 steps (or with a teacher, for comparison).

    python examples/generate.py --pipeline Wan2.1-T2V-1.3B-Diffusers --checkpoint runs/wan/ema_student \\
        --prompt "a red fox runs across a snowy field at dawn" --steps 4 --seed 0 --output videos
    python examples/generate.py --pipeline Cosmos-Predict2-2B-Text2Image --checkpoint runs/cosmos/ema_student \\
        --prompt "a lighthouse on a cliff at sunset" --steps 4 --output images
    torchrun --nproc-per-node 2 examples/generate.py ... --tensor-model-parallel-size 2   # or --context-parallel-size 2

--pipeline is a diffusers WanPipeline (Wan2.1) or Cosmos2TextToImagePipeline (Cosmos-Predict2)
folder: its vae/, text_encoder/ and tokenizer/ are used, and its kind sets the defaults of
--height/--width/--num-frames/--guidance-scale/--negative-prompt. --checkpoint is anything
``megatron_rcm.load_model`` reads (a training save folder, its ema_student, a Megatron
checkpoint or a diffusers transformer folder) of the model family that pipeline samples with.
Teacher mode: --teacher-steps 50 --guidance-scale 5 [--negative-prompt TEXT].

Writes NAME.mp4 (16 fps; an image pipeline: NAME.png), NAME.json (every setting, the seed) and
with --save-latents NAME.pt (the final latents [1, C, T, h, w]) per prompt, into --output, which
appears only when complete.
Prompt i (from 0) uses seed --seed + i; the noise order is documented in megatron_rcm.generation
and docs/generation.md. The model is sharded over TP x CP ranks (all of them sample the same
prompt with the same noise); data-parallel ranks take every DP-th prompt.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_rcm import cli
from megatron_rcm.diffusion import DEFAULT_MID_TIMES, DEFAULT_SIGMA_MAX, flow_matching_schedule
from megatron_rcm.encoders import (PipelineFolderError, check_pipeline_folder, load_text_encoder, load_vae,
                                   pipeline_kind)
from megatron_rcm.atomic_output import OutputExistsError, OutputPathError, atomic_output_dir
from megatron_rcm.generation import (FPS, GenerationError, SamplingConfig, VideoSize, draw_noise, sample, seed_int,
                                     video_frames, video_name, write_mp4, write_png)
from megatron_rcm.parallel import ParallelConfig, ParallelSizeError, current_device, parallel_context

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
USER_ERRORS = (GenerationError, PipelineFolderError, ParallelSizeError, OSError)  # OSError: a file system said no


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("inputs and output")
    g.add_argument("--pipeline", required=True, help="diffusers WanPipeline or Cosmos2TextToImagePipeline folder "
                   "with vae/, text_encoder/, tokenizer/")
    g.add_argument("--checkpoint", required=True, help="the model: what megatron_rcm.load_model reads")
    g.add_argument("--megatron-prefix", help="a Megatron checkpoint recording several models: the one to sample")
    prompts = g.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt")
    prompts.add_argument("--prompts", help="a text file, one prompt per line (blank lines skipped)")
    g.add_argument("--output", required=True, help="output folder (must not exist unless --force)")
    g.add_argument("--force", action="store_true", help="replace an existing --output once the new one is complete")
    g.add_argument("--save-latents", action="store_true", help="also write the final latents as NAME.pt")
    g = parser.add_argument_group("sampling")
    g.add_argument("--steps", type=int, default=4, help="student steps, 1..4 (default: 4)")
    g.add_argument("--seed", type=seed_int, default=0, help="prompt i uses seed + i (default: 0)")
    g.add_argument("--height", type=int, help="pixels (default: the pipeline's, 480 for Wan2.1, 768 for Cosmos)")
    g.add_argument("--width", type=int, help="pixels (default: the pipeline's, 832 for Wan2.1, 1360 for Cosmos)")
    g.add_argument("--num-frames", type=int, help="frames (default: 81 for Wan2.1; an image pipeline takes 1 only)")
    g.add_argument("--sigma-max", type=cli.positive_float, help="student: first step at arctan(this) (default: "
                   f"what the checkpoint records, else {DEFAULT_SIGMA_MAX})")
    g.add_argument("--mid-times", type=cli.positive_float, nargs="+", help="student: TrigFlow times of the later "
                   f"steps (default: what the checkpoint records, else {' '.join(map(str, DEFAULT_MID_TIMES))})")
    g.add_argument("--teacher-steps", type=cli.non_negative_int, default=0,
                   help="teacher mode: this many multi-step sampler steps (default: 0, student mode)")
    g.add_argument("--guidance-scale", type=cli.positive_float, help="teacher mode: CFG scale (default: the "
                   "pipeline's, 5 for Wan2.1, 7 for Cosmos)")
    g.add_argument("--negative-prompt", help="teacher mode: the unconditional branch's prompt (default: the "
                   "pipeline's, \"\" for Wan2.1, its DEFAULT_NEGATIVE_PROMPT for Cosmos)")
    g.add_argument("--sampler", choices=("unipc", "euler"), default="unipc",
                   help="teacher mode sampler (default: unipc)")
    g.add_argument("--shift", type=cli.positive_float, default=3.0,
                   help="teacher mode: RF time shift (default: 3, Wan2.1's at 480p)")
    g = parser.add_argument_group("runtime")
    g.add_argument("--dtype", choices=sorted(DTYPES), help="transformer and text encoder (default: bfloat16 on "
                   "CUDA, float32 on CPU)")
    g.add_argument("--vae-dtype", choices=sorted(DTYPES), default="float32")
    g.add_argument("--no-vae-tiling", action="store_true", help="decode whole frames (more memory)")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument("--cp-comm-type", choices=("a2a", "p2p"), default="a2a")
    g.add_argument("--no-progress", action="store_true")
    cli.add_debug_flag(g)
    return parser.parse_args(argv)


def recorded_settings(args):
    """Fill --sigma-max / --mid-times from the checkpoint's record (a training run's ema_student), else defaults."""
    from megatron_rcm.loading import recorded_sampler

    if not Path(args.checkpoint).exists():
        raise GenerationError(f"--checkpoint {args.checkpoint} does not exist")
    try:
        recorded = recorded_sampler(args.checkpoint) if args.sigma_max is None or args.mid_times is None else {}
    except (OSError, ValueError) as e:
        raise GenerationError(f"--checkpoint {args.checkpoint}: {e}") from None
    if args.sigma_max is None:
        args.sigma_max = float(recorded.get("sigma_max", DEFAULT_SIGMA_MAX))
    if args.mid_times is None:
        args.mid_times = list(recorded.get("mid_times", DEFAULT_MID_TIMES))


def pipeline_defaults(args):
    """The pipeline folder's kind; fills the size, guidance and negative-prompt flags left out with its defaults."""
    kind = pipeline_kind(args.pipeline)
    for flag in ("height", "width", "num_frames", "guidance_scale"):
        if getattr(args, flag) is None:
            setattr(args, flag, getattr(kind, flag))
    if args.negative_prompt is None:
        args.negative_prompt = kind.pipeline_negative_prompt
    if kind.image and args.num_frames != 1:
        raise GenerationError(f"--num-frames {args.num_frames}: a {kind.pipeline_class} folder makes images; "
                              "pass --num-frames 1 or leave it out")
    return kind


def sampling_config(args) -> SamplingConfig:
    return SamplingConfig(steps=args.steps, sigma_max=args.sigma_max, mid_times=tuple(args.mid_times),
                          teacher_steps=args.teacher_steps, guidance_scale=args.guidance_scale,
                          teacher_sampler=args.sampler, shift=args.shift)


def read_prompts(args) -> list:
    if args.prompt is not None:
        prompts = [args.prompt]
    else:
        try:
            # -sig: a byte-order mark (some editors write one) is not part of the first prompt
            prompts = Path(args.prompts).read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise GenerationError(f"--prompts {args.prompts} cannot be read ({e})") from None
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise GenerationError("no prompt given: --prompt is empty or --prompts has only blank lines")
    return prompts


def load_transformer(args, kind, dtype, device):
    """The checkpoint's model; its family must be the one ``kind``'s pipeline samples with."""
    from megatron_rcm import load_model
    from megatron_rcm.models import family_of_config

    try:
        model = load_model(args.checkpoint, model_prefix=args.megatron_prefix, params_dtype=dtype,
                           cp_comm_type=args.cp_comm_type, use_cpu_initialization=device.type == "cpu")
    except (ValueError, KeyError, OSError) as e:
        raise GenerationError(f"--checkpoint {args.checkpoint} is not a transformer checkpoint: {e}") from None
    family = family_of_config(model.config)
    if family.diffusers_class != kind.transformer_class:
        raise GenerationError(f"--checkpoint {args.checkpoint} holds a {family.name} model ({family.diffusers_class}), "
                              f"but --pipeline {args.pipeline} is a {kind.pipeline_class} folder for "
                              f"{kind.transformer_class}: pass that family's pipeline folder")
    return model.to(device).eval()


def encode_prompts(args, prompts, dtype, device):
    """Embeddings [1, L, D] of ``prompts`` on the CPU, and the negative prompt's [L, D] (teacher mode)."""
    encoder = load_text_encoder(args.pipeline, dtype=dtype, device=device)
    embeddings = [encoder.encode([p]).cpu() for p in prompts]
    negative = encoder.encode([args.negative_prompt])[0].cpu() if args.teacher_steps else None
    del encoder
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return embeddings, negative


def sidecar(args, kind, config, size, prompt, index, latent_shape, layout):
    record = {"prompt": prompt, "index": index, "seed": args.seed + index, "checkpoint": args.checkpoint,
              "megatron_prefix": args.megatron_prefix, "pipeline": args.pipeline, "pipeline_class": kind.pipeline_class,
              "height": size.height, "width": size.width, "num_frames": size.num_frames,
              **({} if kind.image else {"fps": FPS}), "latent_shape": list(latent_shape), "dtype": str(args.dtype),
              "vae_dtype": args.vae_dtype, "vae_tiling": not args.no_vae_tiling, "layout": layout,
              "noise": "torch.Generator().manual_seed(seed): float32 draws of latent_shape, the initial noise "
                       "first, then one per student step after the first"}
    if config.teacher:
        record.update(mode="teacher", teacher_steps=config.teacher_steps, sampler=config.teacher_sampler,
                      shift=config.shift, guidance_scale=config.guidance_scale, negative_prompt=args.negative_prompt)
    else:
        schedule = flow_matching_schedule(config.steps, config.sigma_max, config.mid_times)
        record.update(mode="student", steps=config.steps, sigma_max=config.sigma_max,
                      mid_times=list(config.mid_times), flow_matching_sigmas=schedule.sigmas,
                      flow_matching_timesteps=schedule.timesteps, initial_scale=schedule.initial_scale)
    return record


def _write(folder, name, latents, vae, device, args, kind, record):
    frames = video_frames(vae.decode(latents.to(device)))
    try:
        if args.save_latents:
            torch.save(latents.cpu(), folder / f"{name}.pt")
        if kind.image:
            write_png(folder / f"{name}.png", frames[0])
        else:
            write_mp4(folder / f"{name}.mp4", frames)
        (folder / f"{name}.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    except OSError as e:  # a full disk, a quota
        raise OSError(f"--output {args.output}: writing {name} failed ({e})") from None


def generate(args, kind, folder):
    """Sample this data-parallel rank's prompts into ``folder`` (inside a parallel context)."""
    from megatron.core import parallel_state as ps
    from tqdm import tqdm

    config, prompts = sampling_config(args), read_prompts(args)
    size = VideoSize(args.num_frames, args.height, args.width)
    device = current_device()
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    args.dtype = str(dtype).removeprefix("torch.")
    vae = load_vae(args.pipeline, dtype=DTYPES[args.vae_dtype], device="cpu", tiling=not args.no_vae_tiling)
    size.check(vae.spatial_stride, vae.temporal_stride)
    model = load_transformer(args, kind, dtype, device)
    size.check(vae.spatial_stride, vae.temporal_stride, model.config.patch_size, model.config.max_patches())
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    writer = ps.get_tensor_model_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0
    mine = list(range(dp_rank, len(prompts), dp))
    embeddings, negative = encode_prompts(args, [prompts[i] for i in mine], dtype, device)
    if writer:
        vae.vae.to(device)
    shape = size.latent_shape(vae.latent_channels, vae.spatial_stride, vae.temporal_stride)
    layout = {"tensor_parallel": ps.get_tensor_model_parallel_world_size(),
              "context_parallel": ps.get_context_parallel_world_size(), "data_parallel": dp}
    bar = tqdm(total=len(mine) * config.network_calls, desc="sampling", unit="step",
               disable=args.no_progress or dist.get_rank() != 0)
    for i, text in zip(mine, embeddings):
        latents = sample(model, config, draw_noise(shape, config.noise_draws, args.seed + i), text, negative,
                         tick=bar.update)
        if writer:
            record = sidecar(args, kind, config, size, prompts[i], i, shape, layout)
            _write(folder, video_name(i, prompts[i]), latents, vae, device, args, kind, record)
    bar.close()
    return len(prompts)


def _shared_folder(folder):
    """Rank 0's temporary output folder, on every rank."""
    box = [str(folder) if folder is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def run(args):
    output = Path(args.output)
    if output.exists() and not args.force:
        raise OutputExistsError(f"--output {output} exists; choose another folder or pass --force")
    recorded_settings(args)
    check_pipeline_folder(args.pipeline, ["vae", "text_encoder", "tokenizer"])
    kind = pipeline_defaults(args)
    sampling_config(args)
    read_prompts(args)
    parallel = ParallelConfig(tensor_model_parallel_size=args.tensor_model_parallel_size,
                              context_parallel_size=args.context_parallel_size)
    with parallel_context(parallel):
        if dist.get_rank() != 0:
            count = generate(args, kind, _shared_folder(None))
            dist.barrier()
            return count
        try:
            with atomic_output_dir(output, overwrite=args.force) as folder:
                count = generate(args, kind, _shared_folder(folder))
                dist.barrier()
        except OutputPathError as e:  # only atomic_output_dir raises it; its message starts with the path
            raise OutputPathError(f"--output {e}") from None
        print(f"wrote {count} {'image' if kind.image else 'video'}(s) to {output}")
        return count


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.interrupt_on_signals()  # Ctrl-C or a kill removes the temporary output, whatever catches the interrupt
    if args.no_progress:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its "Loading weights" bars
    with cli.one_line_errors("generate", USER_ERRORS, args.debug):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
