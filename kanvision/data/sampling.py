"""The training order and each image's augmentation seed, drawn from (seed, epoch, index) alone.

`SeededSampler` draws each epoch's order from (seed, epoch) and can start part-way through an epoch (a resumed
run skips the batches it trained); `SeededAugment` runs each image's random transform under `sample_seed(seed,
epoch, index)`, so the augmentation depends neither on data-loader workers (count, persistence, restarts) nor
on what ran before. Together with kanvision.train.resume.ExactResume (the training process's own generators)
they make a resumed run bit-identical to one left alone; the device loader (data/device.py) uses the same
order and seeds.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["SeededAugment", "SeededSampler", "sample_seed"]

_MASK64 = (1 << 64) - 1


def _mix(z: int) -> int:
    # SplitMix64 finaliser: neighbouring (epoch, index) pairs get unrelated seeds.
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
    return z ^ (z >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch (63 bits, so every RNG accepts it)."""
    return _mix(_mix(_mix(seed & _MASK64) ^ (epoch & _MASK64)) ^ (index & _MASK64)) >> 1


@contextlib.contextmanager
def _seeded(seed: int):
    # Restored afterwards: with num_workers=0 the transform runs in the training process, whose generators
    # drive dropout and mixup and must not be reseeded by the data.
    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


class SeededAugment(Dataset):
    """Wraps a training dataset: `ds[(index, seed)]` runs `inner[index]` (its random transforms) under `seed`.

    Plain integer keys pass through unseeded (evaluation, inspection)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            with _seeded(seed):
                return self.dataset[index]
        return self.dataset[key]


class SeededSampler(DistributedSampler):
    """Each epoch a permutation drawn from (seed, epoch); yields `(index, sample_seed)` for `SeededAugment`.

    Shards over `num_replicas` ranks itself (rank r takes every r-th of the first n - n % num_replicas indices),
    so Lightning keeps it under DDP instead of wrapping it. `skip` drops the first samples of this rank's
    share of `epoch` (a resumed epoch); `__len__` stays the whole epoch's length so Lightning's counters,
    validation interval and last-batch detection line up with an uninterrupted run.
    """

    def __init__(self, n: int, seed: int, num_replicas: int = 1, rank: int = 0, epoch: int = 0, skip: int = 0):
        # DistributedSampler.__init__ wants a dataset and an initialised process group: neither is needed.
        self.n, self.seed, self.num_replicas, self.rank = n, seed, num_replicas, rank
        self.epoch, self.skip = epoch, skip

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        share = order[self.rank:len(self) * self.num_replicas:self.num_replicas]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in share[self.skip:]])

    def __len__(self) -> int:
        return self.n // self.num_replicas
