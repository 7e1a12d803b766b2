"""Evaluation under DDP that scores every image exactly once.

Lightning gives an evaluation loader without a sampler of its own torch's DistributedSampler, which pads each
rank's share to the same length by repeating the first images: 10,001 test images on 2 ranks are scored as
10,002 (one image twice), on 3 ranks as 10,002 too, and accuracy, loss and counts are off by those repeats.
EvalShard gives rank r of W the images r, r + W, r + 2W, ... and nothing more: the shares differ in length by
at most one, and their union is the dataset, once. The metrics stay exact: torchmetrics sums its counts over
ranks, and Lightning's sync_dist mean divides the summed values by the summed batch sizes.
"""
from __future__ import annotations

from torch.utils.data import DistributedSampler

__all__ = ["EvalShard"]


class EvalShard(DistributedSampler):
    """Indices rank, rank + num_replicas, ... below n: one rank's unpadded share of an evaluation set, in order.

    A DistributedSampler subclass only so that Lightning keeps it (it wraps any other sampler under DDP);
    DistributedSampler.__init__ is not called: it wants a dataset and a process group, and would pad.
    """

    def __init__(self, n: int, num_replicas: int, rank: int):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        self.n, self.num_replicas, self.rank = n, num_replicas, rank
        self.epoch, self.shuffle, self.drop_last = 0, False, False

    def __iter__(self):
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))

    def set_epoch(self, epoch: int) -> None:  # same order every epoch: evaluation is not shuffled
        self.epoch = epoch
