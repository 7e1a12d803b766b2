"""Grid updates of every KAN layer of a model whose kind has one (`Kind.grid_update`, e.g. B-spline), from one batch, identical on every DDP rank.

Each layer's grid is fitted to the inputs that layer sees (captured with forward hooks in one no-grad
pass), as the KAN paper's grid extension does. Under DDP the ranks' rows are gathered (counts may differ
per rank), every rank checks the same global rows (so a bad batch fails on all ranks, none left waiting in
a collective), each layer is fitted once, by one rank (layers dealt round-robin), and the owner's knots
and coefficients are broadcast: ranks end bit-identical, and the fitting work is shared instead of
repeated. Every rank issues the same collectives in the same order.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from kanvision.kinds import kind_of_layer

__all__ = ["grid_layers", "update_grids"]

MAX_ROWS = 16384  # rows per layer fed to the least-squares refit: plenty for 5-10 knots, bounded cost


def grid_layers(model: nn.Module) -> list[nn.Module]:
    """The layers a grid update refits: those of kinds with `grid_update`. Their protocol: `check_update_rows(x)`
    -> (N, in) rows or ValueError, `fitted_grid(rows, margin)` -> (grid, coeff), `empty_grid_state()` -> tensors of
    those shapes, `set_grid(grid, coeff)`."""
    return [m for m in model.modules() if (k := kind_of_layer(m)) is not None and k.grid_update]


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if _world() > 1 else 0


def _gather_counts(counts: list[int], device: torch.device) -> torch.Tensor:
    """(world, layers) row counts of every rank, from one all_gather."""
    mine = torch.tensor(counts, dtype=torch.int64, device=device)
    if _world() == 1:
        return mine.unsqueeze(0)
    parts = [torch.empty_like(mine) for _ in range(_world())]
    dist.all_gather(parts, mine)
    return torch.stack(parts).cpu()


def _gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order; counts[r] rows from rank r (padded for all_gather,
    which needs equal shapes: unequal ones abort gloo and hang NCCL)."""
    if _world() == 1:
        return x
    longest = max(counts)
    padded = x.new_zeros(longest, x.size(1))
    padded[: x.size(0)] = x
    parts = [torch.empty_like(padded) for _ in range(len(counts))]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


@torch.no_grad()
def update_grids(model: nn.Module, images: torch.Tensor, margin: float = 0.01) -> int:
    """Refit every grid layer (`grid_layers`) to its inputs on `images`; returns the number of layers updated.

    A layer the forward pass does not call is left as it is (and not counted). Under DDP, call it on
    every rank with that rank's batch (sizes may differ).
    """
    layers = grid_layers(model)
    if not layers:
        return 0
    world, rank = _world(), _rank()
    per_rank = max(1, MAX_ROWS // world)
    captured: dict[int, torch.Tensor] = {}

    def capture(i):
        def hook(module, args, output):  # after forward: the layer has checked the input's shape
            rows = args[0].detach().reshape(-1, module.in_features)
            # A strided subset bounds the cost for token models (B x tokens rows) and what is held here.
            stride = max(1, rows.size(0) // per_rank)
            captured[i] = rows[::stride].to(module.grid.dtype).contiguous()
        return hook

    hooks = [layer.register_forward_hook(capture(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    try:
        model.eval()  # dropout / drop-path off: the grid should follow the deterministic function
        model(images)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    # Same model on every rank, so the same layers ran everywhere.
    todo = [i for i in range(len(layers)) if i in captured]
    if not todo:
        return 0
    device = captured[todo[0]].device
    counts = _gather_counts([captured[i].size(0) for i in todo], device)  # (world, len(todo))

    for start in range(0, len(todo), world):
        group = todo[start:start + world]  # group[r] is fitted by rank r
        mine = None
        for r, i in enumerate(group):
            rows = _gather_rows(captured.pop(i), counts[:, start + r].tolist())
            rows = layers[i].check_update_rows(rows)  # same rows, same verdict on every rank
            if r == rank:
                mine = rows
        error, fitted = None, {}
        if mine is not None:
            try:
                # Contiguous: collectives send the storage as laid out, a transposed view would arrive scrambled.
                fitted[group[rank]] = layers[group[rank]].fitted_grid(mine, margin)
            except Exception as e:  # noqa: BLE001  (re-raised below, after telling the other ranks)
                error = e
            del mine
        if world > 1:
            # A failed fit must stop every rank, not leave the others waiting in the broadcasts below.
            failed = torch.tensor([0 if error is None else 1], device=device)
            dist.all_reduce(failed)
            if int(failed) and error is None:
                raise RuntimeError("update_grids: the grid fit failed on another rank (see its error)")
        if error is not None:
            raise error
        for r, i in enumerate(group):
            layer = layers[i]
            grid, coeff = fitted.get(i) or layer.empty_grid_state()
            if world > 1:
                dist.broadcast(grid, src=r)
                dist.broadcast(coeff, src=r)
            # set_grid copies (not a collective writing the buffers): the version counters the layer's kernel
            # tables are keyed on change, and grid_uniform is re-derived.
            layer.set_grid(grid, coeff)
    return len(todo)
