"""TrigFlow / rectified-flow time maps, the denoiser wrapper, guidance, time samplers and samplers."""
