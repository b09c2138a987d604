"""Throughput of tools/prepare_data.py's stages with real-size random weights, on one GPU.

One GPU:   python tools/bench_encoders.py [--json out.json] [--skip-teacher]
CPU check: TRITON_INTERPRET=1 python tools/bench_encoders.py --smoke

- VAE encode (megatron_rcm.encoders.WanVAE around diffusers' AutoencoderKLWan with its defaults,
  the Wan2.1 VAE): one clip of 81 frames at 480 x 832 and at 720 x 1280, float32 and bfloat16,
  untiled and tiled (diffusers' tiling); clips/s and peak memory. An untiled run that does not fit
  is reported as OOM.
- Text encode (UMT5-XXL, bf16): one prompt at a time, as prepare_data encodes, on 512 token ids
  with the first --prompt-tokens unmasked (tokenisation, on the CPU, is not timed); prompts/s.
- Teacher samples (Wan2.1 T2V 1.3B, bf16): megatron_rcm.generation.sample with UniPC, --steps
  steps and CFG at 480p x 81 (prepare_data's --prompts mode, text encode included); samples/min.

The VAE and text rows are medians over --repeats runs after a warm-up; the teacher sample is timed
once after a 2-step warm-up.
"""

import argparse
import json
from pathlib import Path

import torch

from bench_flags import add_prompt_flags, output_file  # tools/ is this script's directory
from bench_generate import TINY_UMT5, TINY_VAE, UMT5_XXL, _timed
from bench_wan import Timer
from megatron_rcm import cli

CLIPS = {"480p": (81, 480, 832), "720p": (81, 720, 1280)}
SMOKE_CLIPS = {"smoke": (5, 32, 32)}


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=cli.positive_int, default=2,
                   help="timed runs of each VAE and text row after the warm-up, their median reported "
                        "(default: %(default)s)")
    add_prompt_flags(p)
    p.add_argument("--steps", type=cli.positive_int, default=50, help="teacher sampler steps (default: %(default)s)")
    p.add_argument("--skip-teacher", action="store_true", help="leave out the teacher-sample row")
    p.add_argument("--json", type=output_file, help="write the results here (default: print only)")
    p.add_argument("--smoke", "--cpu-smoke", action="store_true", help="tiny models on the CPU (TRITON_INTERPRET=1)")
    return p


def _vae_rows(args, device, timer):
    from diffusers import AutoencoderKLWan

    from megatron_rcm.encoders import WanVAE

    rows = []
    torch.manual_seed(0)
    with torch.device(device):
        vae = AutoencoderKLWan(**(TINY_VAE if args.smoke else {})).eval()
    for dtype in (torch.float32, torch.bfloat16):
        wan_vae = WanVAE(vae.to(dtype))
        for name, (frames, height, width) in (SMOKE_CLIPS if args.smoke else CLIPS).items():
            video = torch.rand(1, 3, frames, height, width, device=device) * 2 - 1
            for tiled in (False, True):
                vae.enable_tiling() if tiled else vae.disable_tiling()
                seconds, peak = timer(lambda: wan_vae.encode(video))
                rows.append(dict(stage="VAE encode", clip=f"{name} x {frames}", dtype=str(dtype)[6:], tiled=tiled,
                                 seconds=seconds, per_second=None if seconds == "OOM" else 1 / seconds, peak_gib=peak))
    return rows


def _text_encoder(args, device):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    with torch.device(device):
        return UMT5EncoderModel(UMT5Config(**(TINY_UMT5 if args.smoke else UMT5_XXL))).to(
            torch.float32 if args.smoke else torch.bfloat16).eval()


def _text_inputs(args, encoder, device):
    ids = torch.randint(1, encoder.config.vocab_size, (1, 512), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 512, dtype=torch.long)
    mask[:, :args.prompt_tokens] = 1
    return ids.to(device), mask.to(device)


def _encode(encoder, ids, mask):
    with torch.no_grad():
        return encoder(ids, mask).last_hidden_state.masked_fill(~mask.bool()[..., None], 0.0)


def _teacher_row(args, device, encoder, ids, mask):
    from megatron_rcm.generation import SamplingConfig, draw_noise, sample
    from megatron_rcm.models.wan import WanModel, wan_config

    dtype = torch.float32 if args.smoke else torch.bfloat16
    frames, height, width = (SMOKE_CLIPS["smoke"] if args.smoke else CLIPS["480p"])
    channels = TINY_VAE["z_dim"] if args.smoke else 16
    config = wan_config("tiny-a" if args.smoke else "wan2.1-t2v-1.3b", params_dtype=dtype, bf16=not args.smoke,
                        use_cpu_initialization=device.type == "cpu", text_dim=encoder.config.d_model,
                        in_channels=channels, out_channels=channels)
    torch.manual_seed(0)
    model = WanModel(config).to(device).eval()
    shape = (1, channels, (frames - 1) // 4 + 1, height // 8, width // 8)
    negative = _encode(encoder, ids, mask)[0]

    def one_sample(steps):
        text = _encode(encoder, ids, mask)
        sample(model, SamplingConfig(teacher_steps=steps, guidance_scale=args.guidance_scale),
               draw_noise(shape, 1, 0), text, negative)

    one_sample(2)
    seconds, peak = _timed(lambda: one_sample(args.steps), device)
    return dict(stage=f"teacher sample, {args.steps} UniPC steps, CFG {args.guidance_scale}",
                clip=f"{height}p x {frames}", dtype=str(dtype)[6:], tiled=None, seconds=seconds,
                per_second=1 / seconds, per_minute=60 / seconds, peak_gib=peak)


def main():
    args = build_parser().parse_args()
    from megatron_rcm.parallel import current_device, destroy_parallel, initialize_parallel

    if args.smoke:
        args.steps, args.prompt_tokens = 3, 5

    initialize_parallel()
    device = current_device()
    timer = Timer(device, 1 if args.smoke else args.repeats)
    rows = _vae_rows(args, device, timer)
    encoder = _text_encoder(args, device)
    ids, mask = _text_inputs(args, encoder, device)
    seconds, peak = timer(lambda: _encode(encoder, ids, mask))
    rows.append(dict(stage="text encode", clip=f"1 prompt, {args.prompt_tokens} of 512 tokens",
                     dtype=str(next(encoder.parameters()).dtype)[6:], tiled=None, seconds=seconds,
                     per_second=1 / seconds, peak_gib=peak))
    if not args.skip_teacher:
        rows.append(_teacher_row(args, device, encoder, ids, mask))
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"| stage | input | dtype | tiled | seconds | per second | peak GiB |  ({device_name})\n|---|---|---|---|---|---|---|")
    for row in rows:
        seconds = row["seconds"] if row["seconds"] == "OOM" else f"{row['seconds']:.3f}"
        rate = "-" if row["per_second"] is None else f"{row['per_second']:.3f}"
        peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
        tiled = "" if row["tiled"] is None else ("yes" if row["tiled"] else "no")
        print(f"| {row['stage']} | {row['clip']} | {row['dtype']} | {tiled} | {seconds} | {rate} | {peak} |")
    if "per_minute" in rows[-1]:
        print(f"teacher-synthetic samples per minute: {rows[-1]['per_minute']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=device_name, rows=rows), indent=2))
    destroy_parallel()


if __name__ == "__main__":
    main()
