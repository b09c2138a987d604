"""Rerun videos of examples/generate.py with an exported diffusers pipeline and report the latent difference.

    python examples/generate.py --pipeline BASE --checkpoint STUDENT --prompts prompts.txt --steps 4 \\
        --output videos --save-latents
    python tools/convert_checkpoint.py --from megatron --to diffusers-pipeline --pipeline BASE --input STUDENT \\
        --output student-pipeline
    python tools/compare_pipeline_call.py --pipeline student-pipeline --videos videos [--stock-variants]

For each NAME.pt / NAME.json of --videos (student mode), runs the model card's call with the
sidecar's prompt, seed, size and step count, and prints the largest absolute difference of the
latents and its ratio to the largest latent. --stock-variants also runs WanPipeline without each
piece the card adds (the rCM sigmas, the generator for the re-noising, the scaled first latents),
and without all three (the plain stock call but for the seeded first draw): how far stock diffusers
is from the sampler without them.
"""

import argparse
import functools
import json
from pathlib import Path

import torch

from megatron_rcm import cli
from megatron_rcm.convert.diffusers_pipeline import SAMPLER_FILE


def card_call(folder: Path):
    """``rcm_generate`` as the model card defines it."""
    code = (folder / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(code.split("\npipe = WanPipeline.from_pretrained", 1)[0], namespace)
    return namespace["rcm_generate"]


def _stock_variant(pipe, folder, record, drop):
    """The card's call without its pieces named in ``drop`` (``sigmas``, ``generator``, ``scale``)."""
    schedule = json.loads((folder / SAMPLER_FILE).read_text())["schedules"][str(record["steps"])]
    sigmas, timesteps, initial_scale = schedule["sigmas"], schedule["timesteps"], schedule["initial_scale"]
    generator = torch.Generator().manual_seed(record["seed"])
    latents = torch.randn(record["latent_shape"], generator=generator)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    pipe.scheduler = scheduler
    if "sigmas" not in drop:
        scheduler.set_timesteps = functools.partial(type(scheduler).set_timesteps, scheduler, sigmas=sigmas,
                                                    timesteps=timesteps)
    if "generator" not in drop:
        scheduler.step = functools.partial(type(scheduler).step, scheduler, generator=generator)
    return pipe(record["prompt"], height=record["height"], width=record["width"], num_frames=record["num_frames"],
                num_inference_steps=record["steps"], guidance_scale=1.0, output_type="latent",
                latents=latents if "scale" in drop else latents / initial_scale).frames[0]


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a folder written by --to diffusers-pipeline")
    parser.add_argument("--videos", required=True, help="an examples/generate.py --save-latents output folder")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stock-variants", action="store_true", help="also the call without each added piece")
    args = parser.parse_args(argv)
    from diffusers import WanPipeline

    folder = Path(args.pipeline)
    if not (folder / SAMPLER_FILE).is_file():
        cli.fail("compare_pipeline_call", f"--pipeline {folder} has no {SAMPLER_FILE}: pass a folder written by "
                 "tools/convert_checkpoint.py --to diffusers-pipeline")
    sidecars = [p for p in sorted(Path(args.videos).glob("*.json")) if p.with_suffix(".pt").is_file()]
    if not sidecars:
        cli.fail("compare_pipeline_call", f"--videos {args.videos} holds no NAME.json with NAME.pt: pass an "
                 "examples/generate.py --save-latents output folder")
    pipe = WanPipeline.from_pretrained(folder, dtype=getattr(torch, args.dtype)).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    rcm_generate = card_call(folder)
    print("| video | steps | call | max abs difference | / max abs latent |\n|---|---|---|---|---|")
    for sidecar in sidecars:
        record = json.loads(sidecar.read_text())
        if record.get("mode") != "student":
            continue
        expected = torch.load(sidecar.with_suffix(".pt"), weights_only=True)[0].float()
        calls = {"model card": lambda: rcm_generate(
            pipe, record["prompt"], steps=record["steps"], seed=record["seed"], height=record["height"],
            width=record["width"], num_frames=record["num_frames"], output_type="latent")}
        if args.stock_variants:
            for drop in (("sigmas",), ("generator",), ("scale",), ("sigmas", "generator", "scale")):
                calls[f"without {' + '.join(drop)}"] = functools.partial(_stock_variant, pipe, folder, record, drop)
        for name, call in calls.items():
            difference = (call().float().cpu() - expected).abs().max().item()
            print(f"| {sidecar.stem} | {record['steps']} | {name} | {difference:.3e} | "
                  f"{difference / expected.abs().max().item():.3e} |")


if __name__ == "__main__":
    main()
