"""``--to diffusers-pipeline``: a distilled student as a complete diffusers Wan2.1 folder.

The folder holds the student as ``transformer/``, the base pipeline's ``vae/``, ``text_encoder/``
and ``tokenizer/`` (hard-linked, or copied across file systems; never modified), a
``FlowMatchEulerDiscreteScheduler`` with ``stochastic_sampling=True`` (one step of it is one step
of the rCM sampler, ``megatron_rcm.diffusion.flow_matching``), ``rcm_sampler.json`` with the
sampler's sigmas for 1-4 steps, and a model card with the call that reproduces
``examples/generate.py``.
"""

import json
import os
import shutil
from pathlib import Path

from ..diffusion import DEFAULT_MID_TIMES, DEFAULT_SIGMA_MAX, MAX_STEPS, flow_matching_schedule
from ..encoders import PipelineFolderError, check_pipeline_folder
from ..atomic_output import atomic_output_dir
from .wan_native import ConfigMismatchError, DiffusersTensors, write_diffusers

COPIED = ("vae", "text_encoder", "tokenizer")
SAMPLER_FILE = "rcm_sampler.json"


def _link_tree(source: Path, target: Path):
    """``target`` as hard links to the files under ``source`` (copies where links cannot be made)."""
    for root, _, files in os.walk(source):
        folder = target / Path(root).relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(root) / name, folder / name)
            except OSError:
                shutil.copy2(Path(root) / name, folder / name)


def _base_index(base: Path) -> dict:
    try:
        index = json.loads((base / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise PipelineFolderError(f"{base} has no readable model_index.json ({e})") from None
    if index.get("_class_name") != "WanPipeline":
        raise PipelineFolderError(f"{base / 'model_index.json'} describes {index.get('_class_name')!r}, "
                                  "expected a WanPipeline (Wan2.1 text-to-video)")
    return index


def _check_student(student: dict, base: Path):
    vae = json.loads((base / "vae" / "config.json").read_text())
    text = json.loads((base / "text_encoder" / "config.json").read_text())
    for what, ours, theirs in (("in_channels", student["in_channels"], vae.get("z_dim")),
                               ("out_channels", student["out_channels"], vae.get("z_dim")),
                               ("text_dim", student["text_dim"], text.get("d_model"))):
        if ours != theirs:
            raise ConfigMismatchError(f"the student's {what} is {ours} but the base pipeline's "
                                      f"{'text encoder' if what == 'text_dim' else 'VAE'} gives {theirs}")


def sampler_record(sigma_max=DEFAULT_SIGMA_MAX, mid_times=DEFAULT_MID_TIMES) -> dict:
    """``rcm_sampler.json``: the sampler's settings and its flow-matching schedule for each step count."""
    steps = range(1, min(MAX_STEPS, len(mid_times) + 1) + 1)
    return {"sigma_max": sigma_max, "mid_times": list(mid_times),
            "schedules": {str(n): flow_matching_schedule(n, sigma_max, mid_times)._asdict() for n in steps},
            "noise": "torch.Generator().manual_seed(seed): float32 draws of the latent shape, the initial noise "
                     "first (divided by initial_scale), then one per scheduler step"}


def write_diffusers_pipeline(tensors: DiffusersTensors, base, output_path, dtype=None, overwrite=False,
                             progress=True, sigma_max=DEFAULT_SIGMA_MAX, mid_times=DEFAULT_MID_TIMES):
    """Write the student ``tensors`` with ``base``'s VAE, text encoder and tokenizer as a diffusers
    WanPipeline folder at ``output_path`` (atomically); returns the student's config."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    base = check_pipeline_folder(base, COPIED)
    index = _base_index(base)
    _check_student(tensors.config, base)
    record = sampler_record(sigma_max, mid_times)
    with atomic_output_dir(output_path, overwrite=overwrite) as tmp:
        write_diffusers(tensors, tmp / "transformer", dtype, progress=progress, desc="student -> transformer/")
        for name in COPIED:
            _link_tree(base / name, tmp / name)
        FlowMatchEulerDiscreteScheduler(shift=1.0, stochastic_sampling=True).save_pretrained(tmp / "scheduler")
        index.update(scheduler=["diffusers", "FlowMatchEulerDiscreteScheduler"],
                     transformer=["diffusers", "WanTransformer3DModel"])
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / SAMPLER_FILE).write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(record, Path(output_path).name))
    return tensors.config


def model_card(record: dict, name: str) -> str:
    """The folder's README: what it is and the call that reproduces ``examples/generate.py``."""
    schedules = ",\n    ".join(f"{n}: ({s['sigmas']}, {s['timesteps']}, {s['initial_scale']!r})"
                               for n, s in record["schedules"].items())
    return f"""---
library_name: diffusers
pipeline_tag: text-to-video
tags: [wan2.1, rcm, few-step, distillation]
---
# {name}

A Wan2.1 text-to-video transformer distilled with rCM (score-regularised continuous-time
consistency) for 1-{len(record['schedules'])} sampling steps, exported by megatron_rcm as a complete
diffusers `WanPipeline` folder: the student as `transformer/`, the base model's `vae/`,
`text_encoder/` and `tokenizer/`, and a `FlowMatchEulerDiscreteScheduler` with
`stochastic_sampling=True`, whose step is the rCM sampler's step (x0 = x - sigma v, then
x = (1 - sigma') x0 + sigma' noise).

The sampler starts at sigma_max = {record['sigma_max']} and steps through the TrigFlow mid times
{record['mid_times']}; `{SAMPLER_FILE}` holds its flow-matching sigmas for each step count.
Stock `WanPipeline` passes neither `sigmas` to the scheduler's `set_timesteps` nor its
`generator` to the scheduler's `step`, so the call binds both; without them the scheduler's
default sigmas (which start at 1.0) and the global random generator are used instead, which is a
different sampler. Classifier-free guidance is distilled into the student: `guidance_scale=1.0`.

```python
import functools

import torch
from diffusers import WanPipeline

# steps: (sigmas, timesteps, initial_scale), from {SAMPLER_FILE}
RCM_SCHEDULES = {{
    {schedules},
}}


def rcm_generate(pipe, prompt, steps=4, seed=0, height=480, width=832, num_frames=81, output_type="np"):
    sigmas, timesteps, initial_scale = RCM_SCHEDULES[steps]
    generator = torch.Generator().manual_seed(seed)
    shape = (1, pipe.transformer.config.in_channels, (num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
             height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial)
    latents = torch.randn(shape, generator=generator) / initial_scale  # the first draw
    scheduler = pipe.scheduler
    scheduler.set_timesteps = functools.partial(type(scheduler).set_timesteps, scheduler, sigmas=sigmas,
                                                timesteps=timesteps)
    scheduler.step = functools.partial(type(scheduler).step, scheduler, generator=generator)  # later draws
    return pipe(prompt, height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
                guidance_scale=1.0, latents=latents, output_type=output_type).frames[0]


pipe = WanPipeline.from_pretrained("{name}", dtype=torch.bfloat16).to("cuda")
video = rcm_generate(pipe, "a red fox runs across a snowy field at dawn", steps=4, seed=0)
```

With `output_type="latent"` the call returns the latents [C, T, h, w] of the one video whose
[1, C, T, h, w] `python examples/generate.py --pipeline BASE --checkpoint STUDENT --prompt ... --steps N
--seed S --save-latents` writes (equal to float32 rounding in float32). Height and width must be
multiples of 16, the frame count 1 + a multiple of 4.
"""
