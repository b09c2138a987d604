"""The exported pipeline's model card, run as written: its ``rcm_generate`` with
``output_type="latent"`` returns latents of the shape the card states (``.frames[0]``, one video's
[C, T, h, w])."""

import re

import torch

from tests.generation.common import exit_status
from tests.wan_pipeline import tiny_wan_pipeline


def _stated_shape(card):
    return re.search(r'With `output_type="latent"` the call returns the latents \[([^\]]*)\]', card).group(1)


def test_the_card_call_returns_the_latents_it_describes(tmp_path):
    from diffusers import WanPipeline

    base = tiny_wan_pipeline()
    folder = tmp_path / "exported"
    assert exit_status("tools/convert_checkpoint.py", "--from", "diffusers", "--to", "diffusers-pipeline",
                       "--input", base / "transformer", "--pipeline", base, "--output", folder) == 0
    card = (folder / "README.md").read_text()
    namespace = {}
    exec(re.search(r"```python\n(.*?)\npipe = ", card, re.S).group(1), namespace)  # the card's definitions
    pipe = WanPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    latents = namespace["rcm_generate"](pipe, "a red fox", steps=2, height=32, width=48, num_frames=5,
                                        output_type="latent")
    channels = pipe.transformer.config.in_channels
    assert tuple(latents.shape) == (channels, 2, 4, 6)
    assert _stated_shape(card) == "C, T, h, w"
