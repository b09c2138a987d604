from setuptools import find_packages, setup

packages = find_packages(include=["megatron_rcm", "megatron_rcm.*"])
packages.append("megatron_rcm.kernels")

setup(
    name="megatron_rcm",
    version="0.1.0",
    description="rCM (score-regularised continuous-time consistency) distillation of video DiTs on Megatron-core",
    python_requires=">=3.10",
    packages=packages,
    # The Triton kernels live in the top-level folder kernels/ but import only as
    # megatron_rcm.kernels: a bare `kernels` would clash with an unrelated PyPI package.
    package_dir={"megatron_rcm.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.15,<0.20",
        "triton>=3.0,<4",
        "numpy",
        "pyyaml",
        "psutil",
        "einops",
        "packaging",
    ],
    extras_require={
        "hf": ["diffusers>=0.33", "accelerate", "transformers", "safetensors", "sentencepiece", "tqdm"],
        "data": ["webdataset", "imageio", "imageio-ffmpeg"],
        "train": ["tensorboard"],
        "dev": ["pytest", "pytest-timeout", "scikit-learn"],  # scikit-learn: the test that checks the shipped digits file
    },
)
