"""The rCM trainer on megatron-core: config, loop, networks, optimizers, checkpoints, logging.

Imported lazily: ``examples/pretrain_rcm.py`` installs its signal handlers before megatron-core
and the data loaders are imported.
"""

import importlib

_FACE = {
    "ConfigError": "arguments",
    "load_config": "arguments",
    "CheckpointConfig": "config",
    "DataConfig": "config",
    "LoggingConfig": "config",
    "NetworksConfig": "config",
    "OptimizationConfig": "config",
    "TrainingConfig": "config",
    "PowerEMA": "ema",
    "ShardedPowerEMA": "ema",
    "train": "loop",
    "PREEMPTED_EXIT_STATUS": "signals",
}
__all__ = sorted(_FACE)


def __getattr__(name):
    if name in _FACE:
        return getattr(importlib.import_module(f".{_FACE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
