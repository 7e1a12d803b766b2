"""Exact resume: a run stopped after any step and resumed from its checkpoint continues bit-identically.

Lightning restores weights, optimizer, scheduler and loop counters. Three more things decide what the next
step computes, and each gets a state that a checkpoint can carry:

- which samples come next: `SeededSampler` draws each epoch's order from (seed, epoch) alone and can start
  part-way through an epoch (the data module's checkpoint state says how many batches were trained);
- the augmentation's random numbers: `SeededAugment` seeds every sample's transform from (seed, epoch,
  index), so they depend neither on worker processes (count, persistence, restarts) nor on what ran before;
- the training process's random numbers (dropout, drop-path, mixup): `ExactResume` records them after every
  trained batch and puts them back before the first batch after a resume.

Data loaders get their own generator too: creating a loader iterator otherwise draws a seed from the global
generator, at different points in an uninterrupted and a resumed run.
"""
from __future__ import annotations

import contextlib
import random

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ExactResume", "SeededAugment", "SeededSampler", "get_rng_state", "sample_seed", "set_rng_state"]

_MASK64 = (1 << 64) - 1


def _mix(z: int) -> int:
    # SplitMix64 finaliser: neighbouring (epoch, index) pairs get unrelated seeds.
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
    return z ^ (z >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch (63 bits, so every RNG accepts it)."""
    return _mix(_mix(_mix(seed & _MASK64) ^ (epoch & _MASK64)) ^ (index & _MASK64)) >> 1


def get_rng_state() -> dict:
    """torch (CPU and initialised CUDA devices), numpy and Python generator states, as checkpoint-safe types
    (tensors, lists, ints: loadable with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


class ExactResume(L.Callback):
    """Carries the training process's generator states in the checkpoint, restored just before the first
    batch after a resume, once every other restore and loader start-up has run.

    Checkpoints are written between steps (after a batch or after validation, neither of which draws), so
    the state at save time is the one the next step starts from. Under DDP rank 0's states are saved and
    every rank restores them: all ranks are seeded alike and draw alike, so their states are equal in an
    uninterrupted run as well."""

    def __init__(self):
        self._pending: dict | None = None

    @property
    def state_key(self) -> str:
        return "ExactResume"

    def state_dict(self) -> dict:
        return {"rng": get_rng_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("rng")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None
