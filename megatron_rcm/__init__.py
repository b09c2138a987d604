"""megatron_rcm: rCM distillation of video diffusion transformers on Megatron-core."""

__version__ = "0.1.0"


def __getattr__(name):
    # lazy: importing the package must not import megatron-core, diffusers or the kernels
    if name == "load_model":
        from .loading import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
