"""The EMA export (``training.state.export_ema``) records the run's few-step sampler settings, which
examples/generate.py and the evaluation tools read back as their defaults."""

import torch

from megatron_rcm.loading import recorded_sampler
from megatron_rcm.parallel import ParallelConfig, parallel_context
from megatron_rcm.save_folder import EMA_EXPORT
from megatron_rcm.training.arguments import load_config
from megatron_rcm.training.networks import build_networks
from megatron_rcm.training.state import export_ema

from .tiny_setup import make_inputs


def test_the_export_records_the_runs_sigma_max_and_mid_times(tmp_path):
    # other values than the defaults (80; 1.5, 1.4, 1.0), so that a record of the defaults shows
    flags = make_inputs(tmp_path) + ["--train-iters", "1", "--save", str(tmp_path / "save"), "--sigma-max", "40",
                                     "--mid-times", "1.3", "1.1", "0.7"]
    with parallel_context(ParallelConfig()):
        config = load_config(flags, world_size=1)
        export_ema(build_networks(config, torch.device("cpu")), 1, config)
    assert recorded_sampler(tmp_path / "save" / EMA_EXPORT) == {"sigma_max": 40.0, "mid_times": [1.3, 1.1, 0.7]}
