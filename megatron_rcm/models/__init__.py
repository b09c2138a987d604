"""Latent diffusion transformers on megatron-core, one folder per family, with an exact JVP path.

A family (``wan``, ``cosmos``) is found from a preset name, a config, a diffusers class name or
a model class name recorded in a checkpoint; see ``family.ModelFamily`` for what each provides.
"""

from .cosmos import FAMILY as _COSMOS
from .family import ModelFamily
from .wan import FAMILY as _WAN

FAMILIES = {f.name: f for f in (_WAN, _COSMOS)}


def family_of_preset(preset: str) -> ModelFamily:
    """The family whose presets include ``preset``."""
    for f in FAMILIES.values():
        if preset in f.config_class.PRESETS:
            return f
    known = sorted(p for f in FAMILIES.values() for p in f.config_class.PRESETS)
    raise ValueError(f"unknown model preset {preset!r}; known: {known}")


def family_of_config(config) -> ModelFamily:
    """The family of a config object."""
    for f in FAMILIES.values():
        if isinstance(config, f.config_class):
            return f
    raise ValueError(f"{type(config).__name__} is not the config of a model family ({sorted(FAMILIES)})")


def family_of_diffusers(class_name) -> ModelFamily:
    """The family of a diffusers transformer class name (``config.json``'s ``_class_name``)."""
    for f in FAMILIES.values():
        if f.diffusers_class == class_name:
            return f
    known = sorted(f.diffusers_class for f in FAMILIES.values())
    raise ValueError(f"{class_name!r} is not a supported diffusers transformer; supported: {known}")


def family_of_diffusers_config(cfg: dict) -> ModelFamily:
    """The family of a diffusers transformer ``config.json`` dict: its ``_class_name``, or for an
    in-memory config without one, the one family whose diffusers class takes all its keys."""
    if "_class_name" in cfg:
        return family_of_diffusers(cfg["_class_name"])
    import inspect

    import diffusers

    keys = {k for k in cfg if not k.startswith("_")}
    fits = [f for f in FAMILIES.values()
            if keys <= inspect.signature(getattr(diffusers, f.diffusers_class).__init__).parameters.keys()]
    if len(fits) != 1:
        raise ValueError(f"the diffusers config names no model class (_class_name) and its keys fit "
                         f"{len(fits)} families")
    return fits[0]


def family_of_model_class(class_name) -> ModelFamily:
    """The family of a model class name (as checkpoints record it)."""
    for f in FAMILIES.values():
        if f.model_class.__name__ == class_name:
            return f
    raise ValueError(f"{class_name!r} is not a model family's class; known: "
                     f"{sorted(f.model_class.__name__ for f in FAMILIES.values())}")


def model_config(preset: str, **overrides):
    """The config of a preset of any family, with any field overridden."""
    return family_of_preset(preset).config_class.from_preset(preset, **overrides)


__all__ = ["FAMILIES", "ModelFamily", "family_of_config", "family_of_diffusers",
           "family_of_diffusers_config", "family_of_model_class", "family_of_preset", "model_config"]
