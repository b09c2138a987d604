"""megatron_rcm: rCM distillation of video diffusion transformers on Megatron-core."""

__version__ = "0.1.0"
__all__ = ["load_model", "load_model_config"]


def __getattr__(name):
    # lazy: importing the package must not import megatron-core, diffusers or the kernels
    if name in __all__:
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
