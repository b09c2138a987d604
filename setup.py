from setuptools import find_packages, setup

packages = find_packages(include=["megatron_rcm", "megatron_rcm.*"])

setup(
    name="megatron_rcm",
    version="0.1.0",
    description="rCM (score-regularised continuous-time consistency) distillation of video DiTs on Megatron-core",
    python_requires=">=3.10",
    packages=packages,
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
        # FlashAttention-4 for plain attention on Hopper (megatron_rcm.kernels.fa4); CUDA 13 machines add
        # nvidia-cutlass-dsl[cu13]==4.8.1
        "fa4": ["flash-attn-4==4.0.0b36"],
        # scikit-learn: the test that checks the shipped digits file; pytest-xdist: make test runs two workers
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "scikit-learn"],
    },
)
