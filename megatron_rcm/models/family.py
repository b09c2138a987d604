"""What a model family provides, so that loading, conversion, training and the tools need not know which one it is."""

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ModelFamily:
    """One folder under ``megatron_rcm/models/`` (``wan``, ``cosmos``), described by what the rest of the package uses."""

    name: str
    """Short name ("wan", "cosmos")."""

    config_class: type
    """Its ``DiTConfig`` subclass: ``PRESETS``, ``architecture()``, ``from_architecture``, ``from_preset``."""

    model_class: type
    """Its ``VideoDiT`` subclass; ``TIMESTEP_SCALE`` is its denoiser parametrisation."""

    diffusers_class: str
    """The diffusers transformer class name its folders record in ``config.json``."""

    config_from_diffusers: Callable
    """(diffusers config dict, **overrides) -> config."""

    diffusers_config: Callable
    """config -> diffusers config dict (with ``_class_name``)."""

    parameters: Callable
    """config -> its weight map {parameter name: ``weight_map.ParameterSpec``}."""

    convert_diffusers_state_dict: Callable
    """(diffusers state dict, config, tp_rank) -> this TP rank's model state dict."""

    diffusers_forward: Callable
    """(diffusers transformer, x, t, text) -> its output as the family's pipeline calls it."""
