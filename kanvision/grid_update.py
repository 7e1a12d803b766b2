"""Grid updates of every B-spline KAN layer of a model from one batch, identical on every DDP rank.

Each layer's grid is fitted to the inputs that layer sees (captured with forward hooks in one no-grad
pass), as the KAN paper's grid extension does. Under DDP every rank's inputs are gathered so that all
ranks fit the same grid to the same global batch, and rank 0's result is then broadcast, so grids and
coefficients are bit-identical across ranks even if a solver were non-deterministic.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .layers import BSplineKAN

__all__ = ["bspline_layers", "update_grids"]

MAX_ROWS = 16384  # rows per layer fed to the least-squares refit: plenty for 5-10 knots, bounded cost


def bspline_layers(model: nn.Module) -> list[BSplineKAN]:
    return [m for m in model.modules() if isinstance(m, BSplineKAN)]


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    if _world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())  # same shapes on every rank: per-device batches are equal
    return torch.cat(parts)


@torch.no_grad()
def update_grids(model: nn.Module, images: torch.Tensor, margin: float = 0.01) -> int:
    """Refit every BSplineKAN grid to its inputs on `images`; returns the number of layers updated."""
    layers = bspline_layers(model)
    if not layers:
        return 0
    captured: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, i=i: captured.__setitem__(i, args[0].detach()))
             for i, layer in enumerate(layers)]
    was_training = model.training
    try:
        model.eval()  # dropout / drop-path off: the grid should follow the deterministic function
        model(images)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    for i, layer in enumerate(layers):
        rows = captured[i].reshape(-1, layer.in_features)
        # A strided subset, the same on every rank, bounds the cost for token models (B x tokens rows).
        stride = max(1, rows.size(0) // max(1, MAX_ROWS // max(1, _world())))
        rows = _gather_rows(rows[::stride].float().contiguous())
        layer.update_grid(rows.to(layer.grid.dtype), margin=margin)  # its least-squares fit is single-threaded
        if _world() > 1:
            dist.broadcast(layer.grid, src=0)
            dist.broadcast(layer.spline_weight.data, src=0)
    return len(layers)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
