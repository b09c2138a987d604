import pytest
import torch

from megatron_rcm.kernels.flash_jvp import interpreter_enabled


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU with compiled Triton (TRITON_INTERPRET unset)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and not interpreter_enabled():
        return
    skip = pytest.mark.skip(reason="needs CUDA and TRITON_INTERPRET unset")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
