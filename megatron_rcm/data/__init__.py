"""Training data: webdataset latent shards, a resumable data-parallel sampler, synthetic shards, Moving Digits."""
