"""A complete, tiny diffusers Wan2.1 pipeline folder built from real classes (nothing downloaded).

``build_tiny_wan_pipeline(folder)`` writes what ``WanPipeline.save_pretrained`` writes: a tiny
``AutoencoderKLWan``, a tiny ``UMT5EncoderModel`` with a real sentencepiece tokenizer trained here
on a few sentences (as the T5 tokenizer class of the Wan folders), the Wan2.1 UniPC scheduler and a
tiny ``WanTransformer3DModel`` that the project's converter accepts. ``tiny_wan_pipeline()`` builds
it once per test session. The tokenizer, VAE and saving helpers serve ``tests/cosmos_pipeline.py`` too.
"""

import atexit
import functools
import io
import shutil
import tempfile
from pathlib import Path

import torch

SENTENCES = [
    "a red fox runs across a snowy field at dawn",
    "two cats sleep on a warm windowsill in the afternoon",
    "the camera pans slowly over a busy city street at night",
    "waves crash against black rocks under a grey sky",
    "a child flies a yellow kite on the beach",
    "colourful fish swim through a coral reef",
    "an old man reads a newspaper in a quiet park",
]

# The Wan2.1 text-to-video scheduler config (Wan-AI/Wan2.1-T2V-1.3B-Diffusers, scheduler/).
WAN21_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                       solver_order=2, prediction_type="flow_prediction", thresholding=False, predict_x0=True,
                       solver_type="bh2", lower_order_final=True, disable_corrector=[], use_flow_sigmas=True,
                       flow_shift=3.0, timestep_spacing="linspace", steps_offset=0, final_sigmas_type="zero")

TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_UMT5 = dict(d_model=24, d_kv=8, d_ff=40, num_layers=2, num_heads=3, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, dropout_rate=0.0)
# The project's "tiny-a" transformer (megatron_rcm.models.wan.config); text_dim and channels follow the encoders.
TINY_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, ffn_dim=96,
                        num_layers=2, freq_dim=16, cross_attn_norm=True, eps=1e-6)


def _tokenizer(folder: Path, tokenizer_class: str):
    import sentencepiece
    import transformers

    model = io.BytesIO()
    # T5's id layout: pad 0, eos 1, unk 2, no bos
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4), model_writer=model, vocab_size=96, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    folder.mkdir(parents=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return getattr(transformers, tokenizer_class).from_pretrained(folder)


def perturbed(module, scale):
    with torch.no_grad():  # diffusers starts norms at one and some tables at zero: make every weight matter
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


def tiny_vae(generator, latents_std=None):
    """A tiny ``AutoencoderKLWan`` with random latent statistics (``latents_std`` if given)."""
    from diffusers import AutoencoderKLWan

    z_dim = TINY_VAE["z_dim"]
    mean = (torch.randn(z_dim, generator=generator) * 0.3).tolist()
    std = (0.5 + torch.rand(z_dim, generator=generator)).tolist() if latents_std is None else list(latents_std)
    return perturbed(AutoencoderKLWan(**TINY_VAE, latents_mean=mean, latents_std=std), 0.02)


def save_tiny_pipeline(folder, make_pipeline, seed=0, tokenizer_class="T5Tokenizer") -> Path:
    """Save ``make_pipeline(tokenizer, generator)`` into ``folder``, with a real sentencepiece
    tokenizer of ``tokenizer_class`` trained here, global RNG and ``generator`` seeded with ``seed``."""
    folder = Path(folder)
    torch.manual_seed(seed)
    staging = Path(tempfile.mkdtemp(prefix="tokenizer-"))
    try:
        tokenizer = _tokenizer(staging / "tokenizer", tokenizer_class)
        make_pipeline(tokenizer, torch.Generator().manual_seed(seed)).save_pretrained(folder)
        shutil.copy(staging / "tokenizer" / "spiece.model", folder / "tokenizer" / "spiece.model")
    finally:
        shutil.rmtree(staging)
    return folder


def build_tiny_wan_pipeline(folder, transformer_config=None, seed=0) -> Path:
    """Write a tiny Wan2.1 diffusers pipeline into ``folder``; ``transformer_config`` overrides
    ``WanTransformer3DModel`` arguments of the tiny default."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    def pipeline(tokenizer, generator):
        vae = tiny_vae(generator)
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TINY_UMT5)).eval()
        transformer = perturbed(WanTransformer3DModel(**{
            **TINY_TRANSFORMER, "in_channels": TINY_VAE["z_dim"], "out_channels": TINY_VAE["z_dim"],
            "text_dim": TINY_UMT5["d_model"], **(transformer_config or {})}), 0.1)
        return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                           scheduler=UniPCMultistepScheduler(**WAN21_SCHEDULER))

    return save_tiny_pipeline(folder, pipeline, seed)


def cached_build(build, prefix, seed) -> Path:
    """``build(folder, seed=seed)`` into a temporary folder removed at exit."""
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, parent, ignore_errors=True)
    return build(parent / "pipeline", seed=seed)


@functools.lru_cache(maxsize=None)
def tiny_wan_pipeline(seed=0) -> Path:
    """The tiny pipeline folder, built once per process into a temporary folder (read it, never write it)."""
    return cached_build(build_tiny_wan_pipeline, "tiny-wan-", seed)
