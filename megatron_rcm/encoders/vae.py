"""The Wan2.1 video VAE (diffusers ``AutoencoderKLWan``) with the pipelines' latent normalisation: the
Wan pipelines' and Cosmos-Predict2's (which uses this VAE for images, one latent frame)."""

import torch

from .folder import check_pipeline_folder


class WanVAE:
    """Pixels [B, 3, F, H, W] in [-1, 1] <-> normalised latents [B, C, T, h, w].

    ``encode`` takes the posterior *mode* (its mean), not a sample: a latent dataset is then a
    deterministic function of the videos (re-running a preparation gives the same shards), and the
    Wan pipelines encode their conditioning videos the same way (``sample_mode="argmax"``). The
    latents are normalised per channel with the VAE config's ``latents_mean`` / ``latents_std``
    using the pipelines' own expressions, so ``decode`` gives what ``WanPipeline`` would decode,
    and what ``Cosmos2TextToImagePipeline`` decodes (its ``sigma_data`` is 1). F must be 1 + a
    multiple of ``temporal_stride`` (an image: F = 1); H and W multiples of ``spatial_stride``.
    """

    def __init__(self, vae):
        self.vae = vae
        config = vae.config
        self.latent_channels = config.z_dim
        self.spatial_stride = config.scale_factor_spatial
        self.temporal_stride = config.scale_factor_temporal
        shape = (1, config.z_dim, 1, 1, 1)
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float64).view(shape)
        self._inv_std = 1.0 / torch.tensor(config.latents_std, dtype=torch.float64).view(shape)

    @property
    def device(self):
        return next(self.vae.parameters()).device

    @property
    def dtype(self):
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised latents (in the VAE's dtype) of ``video`` [B, 3, F, H, W] in [-1, 1]."""
        mode = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.mode()
        mean, inv_std = self._mean.to(mode.device, mode.dtype), self._inv_std.to(mode.device, mode.dtype)
        return (mode - mean) * inv_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, F, H, W] in [-1, 1] of normalised ``latents`` (the inverse of ``encode``)."""
        latents = latents.to(self.device, self.dtype)
        mean, inv_std = self._mean.to(latents.device, latents.dtype), self._inv_std.to(latents.device, latents.dtype)
        return self.vae.decode(latents / inv_std + mean, return_dict=False)[0]


def vae_geometry(pipeline_dir) -> tuple:
    """(latent_channels, spatial_stride, temporal_stride) of a pipeline folder's VAE, from its config
    with diffusers' defaults filled in, without reading the weights."""
    from diffusers import AutoencoderKLWan

    folder = check_pipeline_folder(pipeline_dir, ["vae"])
    with torch.device("meta"):
        config = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(folder / "vae")).config
    return config.z_dim, config.scale_factor_spatial, config.scale_factor_temporal


def load_vae(pipeline_dir, dtype=torch.float32, device="cpu", tiling=False) -> WanVAE:
    """The ``vae/`` of a diffusers pipeline folder (Wan2.1 or Cosmos-Predict2). ``tiling`` encodes and decodes in
    overlapping spatial tiles, one video of a batch at a time (diffusers' tiling and slicing): what
    lets a 720p x 81-frame clip fit; the result differs from untiled coding only near tile seams."""
    from diffusers import AutoencoderKLWan

    folder = check_pipeline_folder(pipeline_dir, ["vae"])
    vae = AutoencoderKLWan.from_pretrained(folder / "vae", dtype=dtype).to(device).eval()
    if tiling:
        vae.enable_tiling()
        vae.enable_slicing()
    return WanVAE(vae)
