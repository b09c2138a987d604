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
        "dev": ["pytest", "pytest-timeout", "scikit-learn"],  # scikit-learn: the test that checks the shipped digits file
    },
)
