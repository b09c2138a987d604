"""Wall time of a 4-step rCM student video against a 50-step teacher video with CFG, end to end
(text encode, denoise, VAE decode) and transformer only, with real-size random weights.

One GPU:   python tools/bench_generate.py [--json out.json]
TP=2:      torchrun --nproc-per-node 2 tools/bench_generate.py --tp 2
CP=2:      torchrun --nproc-per-node 2 tools/bench_generate.py --cp 2
Cosmos:    python tools/bench_generate.py --preset cosmos-predict2-2b --height 1024 --width 1024 --num-frames 1 \\
               --teacher-steps 35 --guidance-scale 7
CPU check: TRITON_INTERPRET=1 python tools/bench_generate.py --smoke [--preset cosmos-predict2-2b --num-frames 1]

Wan2.1 T2V 1.3B transformer (bf16), the Wan2.1 VAE (diffusers' AutoencoderKLWan defaults, float32,
tiled decode) and UMT5-XXL (bf16), all randomly initialised; 480p x 81 frames. Text encoding runs
UMT5 on 512 token ids (a random prompt of --prompt-tokens tokens, the rest masked as WanPipeline
pads it); the teacher also encodes its negative prompt. Denoising is megatron_rcm.generation.sample,
as examples/generate.py runs it: the student with the rCM sampler, the teacher with UniPC and
classifier-free guidance (two transformer passes per step, batched). Each stage is timed once after
a warm-up (the teacher's: a 2-step run); end to end is the sum of the stages. Under torchrun the
transformer is sharded (TP or CP) and the text encoder and VAE are replicated on every rank; rank 0
prints. A Cosmos-Predict2 preset runs with the encoder of T5-11B (bf16) instead of UMT5-XXL.
"""

import argparse
import json
import time
from pathlib import Path

# bench_flags: tools/ is this script's directory. torch and the models are imported where they are
# used, so that a wrong flag is refused before they load
from bench_flags import add_parallel_flags, add_prompt_flags, check_parallel, output_file, preset_family, world_size
from megatron_rcm import cli

UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dropout_rate=0.0)
# google-t5/t5-11b, the text encoder of the Cosmos-Predict2 folders
T5_11B = dict(vocab_size=32128, d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_heads=128,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu",
              dropout_rate=0.0)
TINY_UMT5 = dict(vocab_size=96, d_model=24, d_kv=8, d_ff=40, num_layers=2, num_heads=3,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
# per family: (transformers config and encoder class names, real-size encoder, tiny preset)
FAMILY_PARTS = {"wan": ("UMT5Config", "UMT5EncoderModel", UMT5_XXL, "tiny-a"),
                "cosmos": ("T5Config", "T5EncoderModel", T5_11B, "cosmos-tiny-a")}
TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * 4,
                latents_std=[1.0] * 4)


# AutoencoderKLWan's compression (its defaults' and TINY_VAE's): 8x in space, 4x in time
VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE = 8, 4


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="wan2.1-t2v-1.3b",
                   help="a model preset of any family (--smoke: that family's tiny one) (default: %(default)s)")
    p.add_argument("--height", type=cli.positive_int, default=480,
                   help="video height in pixels, a multiple of 16 (default: %(default)s)")
    p.add_argument("--width", type=cli.positive_int, default=832,
                   help="video width in pixels, a multiple of 16 (default: %(default)s)")
    p.add_argument("--num-frames", type=cli.positive_int, default=81,
                   help="video frames, 4k + 1; 1 for an image (default: %(default)s)")
    p.add_argument("--student-steps", type=cli.positive_int, default=4,
                   help="the rCM student's sampler steps, 1 to 4 (default: %(default)s)")
    p.add_argument("--teacher-steps", type=cli.positive_int, default=50,
                   help="the teacher's UniPC steps, each with CFG (default: %(default)s)")
    add_prompt_flags(p)
    add_parallel_flags(p)
    p.add_argument("--no-vae-tiling", action="store_true", help="decode whole frames (more memory)")
    p.add_argument("--json", type=output_file, help="write the results here (default: print only)")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU (with TRITON_INTERPRET=1)")
    return p


def _parse():
    parser = build_parser()
    args = parser.parse_args()
    check_parallel(parser, args, world_size(), "torchrun --nproc-per-node")
    family = preset_family(parser, args.preset)
    if args.smoke:
        args.preset = FAMILY_PARTS[family.name][3]
        args.height, args.width, args.teacher_steps, args.prompt_tokens = 32, 32, 3, 5
        args.num_frames = min(args.num_frames, 5)
    _check_sampling(parser, args, family)
    return args


def _check_sampling(parser, args, family):
    """One line for a step count or a video size the samplers or the model cannot take."""
    from megatron_rcm.diffusion import MAX_STEPS
    from megatron_rcm.generation import GenerationError, VideoSize

    if args.student_steps > MAX_STEPS:
        parser.error(f"--student-steps must lie in 1..{MAX_STEPS} (the rCM sampler's step counts), "
                     f"not {args.student_steps}")
    patch_size = family.config_class.PRESETS[args.preset]["patch_size"]
    try:
        VideoSize(args.num_frames, args.height, args.width).check(VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE, patch_size)
    except GenerationError as error:
        parser.error(str(error))


def _build(args, device):
    """(transformer, text encoder, VAE), random; the tiny ones with --smoke."""
    import torch
    import transformers
    from diffusers import AutoencoderKLWan

    from megatron_rcm.encoders import WanVAE
    from megatron_rcm.models import family_of_preset

    dtype = torch.float32 if args.smoke else torch.bfloat16
    torch.manual_seed(0)  # the same weights on every rank
    family = family_of_preset(args.preset)
    config_class, encoder_class, real_size, _ = FAMILY_PARTS[family.name]
    text_config = getattr(transformers, config_class)(**(TINY_UMT5 if args.smoke else real_size))
    config = family.config_class.from_preset(
        args.preset, params_dtype=dtype, bf16=not args.smoke, tensor_model_parallel_size=args.tp,
        context_parallel_size=args.cp, cp_comm_type=args.cp_mode, use_cpu_initialization=device.type == "cpu",
        text_dim=text_config.d_model,
        **({"in_channels": TINY_VAE["z_dim"], "out_channels": TINY_VAE["z_dim"]} if args.smoke else {}))
    model = family.model_class(config).to(device).eval()
    with torch.device(device):
        encoder = getattr(transformers, encoder_class)(text_config).to(dtype).eval()
        vae = AutoencoderKLWan(**(TINY_VAE if args.smoke else {})).eval()
    if not args.no_vae_tiling:
        vae.enable_tiling()
    return model, encoder, WanVAE(vae)


def _timed(fn, device):
    """(seconds, peak GiB allocated) of one call of fn."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    sync()
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None)


def main():
    args = _parse()
    import torch

    from megatron_rcm.generation import SamplingConfig, VideoSize, draw_noise, sample
    from megatron_rcm.parallel import ParallelConfig, current_device, destroy_parallel, initialize_parallel

    initialize_parallel(ParallelConfig(tensor_model_parallel_size=args.tp, context_parallel_size=args.cp))
    rank0 = torch.distributed.get_rank() == 0
    device = current_device()
    model, encoder, vae = _build(args, device)
    size = VideoSize(args.num_frames, args.height, args.width)
    size.check(vae.spatial_stride, vae.temporal_stride, model.config.patch_size)
    shape = size.latent_shape(vae.latent_channels, vae.spatial_stride, vae.temporal_stride)
    ids = torch.randint(1, encoder.config.vocab_size, (1, 512), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 512, dtype=torch.long)
    mask[:, :args.prompt_tokens] = 1
    ids, mask = ids.to(device), mask.to(device)

    @torch.no_grad()
    def encode():
        return encoder(ids, mask).last_hidden_state.masked_fill(~mask.bool()[..., None], 0.0)

    text = encode()
    student = SamplingConfig(steps=args.student_steps)
    teacher = SamplingConfig(teacher_steps=args.teacher_steps, guidance_scale=args.guidance_scale)
    latents = {}

    def denoise(name, config):
        latents[name] = sample(model, config, draw_noise(shape, config.noise_draws, 0), text, text[0])

    stages = {"text encode": (encode, encode),
              "student denoise": (lambda: denoise("student", student), lambda: denoise("student", student)),
              "teacher denoise": (lambda: denoise("warm-up", SamplingConfig(teacher_steps=2)),
                                  lambda: denoise("teacher", teacher)),
              "VAE decode": (lambda: vae.decode(latents["student"]), lambda: vae.decode(latents["student"]))}
    for name, (warm_up, _) in stages.items():
        warm_up()
    stages = {name: _timed(run, device) for name, (_, run) in stages.items()}
    seconds = {name: value[0] for name, value in stages.items()}
    student_total = seconds["text encode"] + seconds["student denoise"] + seconds["VAE decode"]
    teacher_total = 2 * seconds["text encode"] + seconds["teacher denoise"] + seconds["VAE decode"]
    result = {
        "preset": args.preset, "tp": args.tp, "cp": args.cp, "cp_mode": args.cp_mode,
        "size": [args.num_frames, args.height, args.width], "latent_shape": list(shape),
        "student_steps": args.student_steps, "teacher_steps": args.teacher_steps,
        "guidance_scale": args.guidance_scale, "seconds": seconds,
        "peak_gib": {name: value[1] for name, value in stages.items()},
        "student_end_to_end": student_total, "teacher_end_to_end": teacher_total,
        "speedup_end_to_end": teacher_total / student_total,
        "speedup_transformer": seconds["teacher denoise"] / seconds["student denoise"],
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }
    if rank0:
        print(f"| stage | seconds | ({result['device']}, {result['preset']}, TP={args.tp}, CP={args.cp})\n|---|---|")
        for name, value in seconds.items():
            print(f"| {name} | {value:.3f} |")
        print(f"| student {args.student_steps} steps, end to end | {student_total:.3f} |")
        print(f"| teacher {args.teacher_steps} steps x CFG, end to end | {teacher_total:.3f} |")
        print(f"speed-up: end to end {result['speedup_end_to_end']:.1f}x, "
              f"transformer only {result['speedup_transformer']:.1f}x")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    destroy_parallel()


if __name__ == "__main__":
    main()
