"""Learned univariate functions of a KAN layer, ranked by importance on data.

Importance of edge (o, i) is the KAN paper's L1 of activations (Liu et al. 2024, "KAN"): the mean over
samples of |phi_{o,i}(x_i)|, with the layer's inputs captured by a forward hook.
A layer takes part when its kind's layer class has the edge protocol: `edge_inputs(rows)` (the values its
univariate functions see: x itself, or LayerNorm(x) for RSWAF, which mixes the inputs), `edge_values(u)` ->
phi_{o,i}(u[:, i]) as (N, out, in), `edge_knots(i)` and `edge_range(i)` (where its basis is defined), and
`edge_xlabel`. B-spline and RSWAF have it (see their classes).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kanvision.models import kan_modules


def kan_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every KAN layer with the edge protocol (module docstring)."""
    kan = {id(m) for m in kan_modules(model)}
    return [(n, m) for n, m in model.named_modules() if id(m) in kan and hasattr(m, "edge_values")]


def capture_inputs(model: nn.Module, layer: nn.Module, x: torch.Tensor, max_rows: int = 4096) -> torch.Tensor:
    """The values the layer's edge functions see (rows, in_features) during `model(x)` (`edge_inputs`)."""
    got = []
    h = layer.register_forward_hook(lambda m, inp, out: got.append(inp[0].detach()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        h.remove()
    if not got:
        raise ValueError("the chosen KAN layer was not called by the model's forward")
    rows = got[0].reshape(-1, layer.in_features)[:max_rows]
    with torch.no_grad():
        return layer.edge_inputs(rows)


def edge_values(layer: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """phi_{o,i}(u[:, i]) for all edges: (N, out, in)."""
    if not hasattr(layer, "edge_values"):
        raise TypeError(f"spline plots need a KAN layer with edge functions (edge_values), got {type(layer).__name__}")
    with torch.no_grad():
        return layer.edge_values(u)


def plot_edges(layer: nn.Module, u: torch.Tensor, path: Path, top: int = 9, title: str = "") -> list[dict]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Every tensor below is built where the layer lives, in its dtype (its weights may be on a GPU, or
    # float64); only the plotted values are copied to the CPU.
    ref = next(layer.parameters())
    u = u.to(ref.device, ref.dtype)
    imp = edge_values(layer, u).abs().mean(0)  # (out, in)
    order = torch.argsort(imp.flatten(), descending=True)[:top]
    cols = min(3, len(order))
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    info = []
    for ax, k in zip(axes.flat, order.tolist()):
        o, i = divmod(k, layer.in_features)
        data = u[:, i].cpu()
        knots = layer.edge_knots(i).detach().cpu()
        lo, hi = layer.edge_range(i)
        outside = float(((data < lo) | (data > hi)).float().mean())
        xs = torch.linspace(min(lo, float(data.min())), max(hi, float(data.max())), 200, dtype=u.dtype)
        ys = edge_values(layer, _at(xs, i, layer.in_features, u))[:, o, i].cpu()
        ax2 = ax.twinx()
        ax2.hist(data.numpy(), bins=40, color="0.85")
        ax2.set_yticks([])
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(xs.numpy(), ys.numpy(), "C0")
        k_in = knots[(knots >= xs[0]) & (knots <= xs[-1])]
        k_ys = edge_values(layer, _at(k_in, i, layer.in_features, u))[:, o, i].cpu()
        ax.plot(k_in.numpy(), k_ys.numpy(), "C3|", ms=10)
        ax.set_title(f"edge in {i} -> out {o}  |phi|={float(imp[o, i]):.3g}\n{outside:.0%} of data outside grid", fontsize=8)
        info.append({"out": o, "in": i, "importance": float(imp[o, i]), "fraction_outside_grid": outside})
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    xlabel = layer.edge_xlabel
    fig.suptitle(f"{title} ({xlabel}; red ticks: grid points)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return info


def _at(vals: torch.Tensor, i: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """Layer inputs (len(vals), n) that are `vals` in column i and 0 elsewhere, on like's device and dtype."""
    out = like.new_zeros(len(vals), n)
    out[:, i] = vals.to(like)
    return out
