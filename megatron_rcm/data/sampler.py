"""A data order that is the same at every data-parallel size and resumes at the exact sample.

The global stream is the concatenation of per-epoch permutations of the dataset (epoch e uses
a generator seeded with seed + e). Training step s consumes the global samples
[s * G, (s + 1) * G) with G the global batch; data-parallel rank r takes its micro-batches from
that window at stride. The only state is ``consumed_samples``, so a run resumed on another
data-parallel size continues with exactly the samples the old run would have seen next.
Tensor- and context-parallel ranks of one model replica share a data-parallel rank and
therefore read the same samples.
"""

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler):
    def __init__(self, num_samples, micro_batch_size, data_parallel_rank, data_parallel_size,
                 seed=1234, consumed_samples=0, shuffle=True):
        if num_samples <= 0:
            raise ValueError("the dataset is empty")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank {data_parallel_rank} outside [0, {data_parallel_size})")
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
        self.num_samples = num_samples
        self.micro_batch_size = micro_batch_size
        self.rank = data_parallel_rank
        self.world = data_parallel_size
        self.seed = seed
        self.shuffle = shuffle
        self.consumed_samples = consumed_samples
        self._epoch_cache = (None, None)

    def _epoch_order(self, epoch):
        if self._epoch_cache[0] != epoch:
            if self.shuffle:
                order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
            else:
                order = torch.arange(self.num_samples)
            self._epoch_cache = (epoch, order.tolist())
        return self._epoch_cache[1]

    def global_index(self, position):
        """Dataset index of the sample at ``position`` of the global stream."""
        epoch, within = divmod(position, self.num_samples)
        return self._epoch_order(epoch)[within]

    def __iter__(self):
        """Batches of dataset indices for this rank, forever, starting at ``consumed_samples``."""
        step_samples = self.micro_batch_size * self.world
        position = self.consumed_samples
        while True:
            start = position + self.rank * self.micro_batch_size
            yield [self.global_index(start + i) for i in range(self.micro_batch_size)]
            position += step_samples

    def state_dict(self):
        return {"consumed_samples": self.consumed_samples, "seed": self.seed, "num_samples": self.num_samples}

    def load_state_dict(self, state):
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            raise ValueError(
                f"the checkpoint's data order (seed {state['seed']}, {state['num_samples']} samples) differs from "
                f"this run's (seed {self.seed}, {self.num_samples} samples); use the same shards and --seed"
            )
        self.consumed_samples = state["consumed_samples"]
