"""Benchmark the Megatron Cosmos-Predict2 model against diffusers' CosmosTransformer3DModel (same config, same run).

One GPU:   python tools/bench_cosmos.py [--preset cosmos-predict2-2b] [--height 1024 --width 1024] [--json out.json]
14B width: python tools/bench_cosmos.py --preset cosmos-predict2-14b --layers 4
TP=2:      torchrun --nproc-per-node 2 tools/bench_cosmos.py --tp 2 --sp
CP=2:      torchrun --nproc-per-node 2 tools/bench_cosmos.py --cp 2 --cp-mode a2a   (or --cp-mode p2p, ring)
CPU check: TRITON_INTERPRET=1 python tools/bench_cosmos.py --smoke

Text-to-image: one latent frame of 1024 x 1024 pixels (128 x 128 latents, 4096 tokens), T5 text
length 512, random weights, bf16. The measurements are tools/bench_wan.py's: ours forward, jvp,
forward+backward with and without per-block recompute; diffusers forward and forward+backward
with and without gradient checkpointing; the bf16 error of our forward and jvp against float32.
"""

import sys

from bench_wan import main

COSMOS_DEFAULTS = dict(preset="cosmos-predict2-2b", smoke_preset="cosmos-tiny-a", frames=1, height=1024, width=1024,
                       text_len=512)

if __name__ == "__main__":
    sys.exit(main(COSMOS_DEFAULTS, __doc__))
