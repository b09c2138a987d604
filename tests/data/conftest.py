import pytest

from tests.wan_pipeline import tiny_wan_pipeline


@pytest.fixture(scope="session")
def pipeline():
    """The tiny Wan2.1 diffusers pipeline folder (built once; read it, never write it)."""
    return tiny_wan_pipeline()
