"""Training and inference images/s: warm-up iterations, then the median of timed repeats."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kanvision.device import synchronize


def throughput(model: nn.Module, input_shape, num_classes: int, batch_size: int = 32, warmup: int = 2,
               repeats: int = 5, device="cpu", progress: Callable[[str], None] | None = None
               ) -> dict[str, float | int | str]:
    """images/s of one SGD training step (fwd + bwd + step) and of one no-grad forward (eval mode).

    `progress(detail)` is called after each of the 2 x (warmup + repeats) calls, outside the timed span.
    """
    device = torch.device(device)
    model = model.to(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: timing must not change the weights

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model(x)

    out = {"batch_size": batch_size, "warmup": warmup, "repeats": repeats, "device": str(device),
           "threads": torch.get_num_threads()}
    for name, fn, mode in (("train", train_step, True), ("inference", infer, False)):
        model.train(mode)
        times = []
        for r in range(warmup + repeats):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            if r >= warmup:
                times.append(time.perf_counter() - t0)
            if progress is not None:
                progress(f"{name} {'warm-up' if r < warmup else 'timed'} {r + 1}/{warmup + repeats}")
        out[f"{name}_images_per_s"] = batch_size / statistics.median(times)
    model.eval()
    return out
