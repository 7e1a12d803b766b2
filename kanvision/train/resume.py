"""Exact resume: a run stopped after any step and resumed from its checkpoint continues bit-identically.

Lightning restores weights, optimizer, scheduler and loop counters. Three more things decide what the next
step computes, and each gets a state that a checkpoint can carry:

- which samples come next (kanvision.data.sampling): `SeededSampler` draws each epoch's order from (seed, epoch) alone and can start
  part-way through an epoch (the data module's checkpoint state says how many batches were trained);
- the augmentation's random numbers: `SeededAugment` seeds every sample's transform from (seed, epoch,
  index), so they depend neither on worker processes (count, persistence, restarts) nor on what ran before;
- the training process's random numbers (dropout, drop-path, mixup): `ExactResume` records them after every
  trained batch and puts them back before the first batch after a resume.

Data loaders get their own generator too: creating a loader iterator otherwise draws a seed from the global
generator, at different points in an uninterrupted and a resumed run.
"""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

# The data side (training order, per-image augmentation seeds) lives in kanvision.data.sampling; re-exported here.
from kanvision.data.sampling import SeededAugment, SeededSampler, sample_seed

__all__ = ["ExactResume", "SeededAugment", "SeededSampler", "get_rng_state", "sample_seed", "set_rng_state"]


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
