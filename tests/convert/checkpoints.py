"""Random tiny checkpoints and folder inspection shared by the conversion tests."""

import torch
from diffusers import WanTransformer3DModel

from megatron_rcm.convert.tensor_files import TensorReader

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            text_dim=12, freq_dim=16, ffn_dim=24, num_layers=2)


def random_diffusers(tmp_path, seed=0):
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TINY)
    with torch.no_grad():  # norms start at 1 and tables at 0: draw every parameter fresh
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    folder = tmp_path / "diffusers"
    model.save_pretrained(folder)
    return model, folder


def tensors(folder):
    reader = TensorReader(folder)
    return {k: reader.get(k) for k in reader.keys()}


def leftovers(parent):
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
