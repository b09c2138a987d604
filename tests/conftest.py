from pathlib import Path

import pytest
import torch

KERNEL_TESTS = Path(__file__).parent / "kernels"


def _gpu_skip_reason(item):
    """Why a test marked ``gpu`` cannot run here, or None. Kernel tests also need compiled Triton."""
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    if KERNEL_TESTS in Path(item.fspath).parents:
        from megatron_rcm.kernels.flash_jvp import interpreter_enabled

        if interpreter_enabled():
            return "needs CUDA and TRITON_INTERPRET unset"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = _gpu_skip_reason(item) if "gpu" in item.keywords else None
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
