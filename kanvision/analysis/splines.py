"""Learned univariate functions of a KAN layer, ranked by importance on data.

Importance of edge (o, i) is the KAN paper's L1 of activations (Liu et al. 2024, "KAN"): the mean over
samples of |phi_{o,i}(x_i)|, with the layer's inputs captured by a forward hook.
- BSplineKAN: phi_{o,i}(x) = w_base[o,i] SiLU(x) + sum_m c[o,i,m] s[o,i] B_m(x), plotted against x_i.
- RSWAFKAN: phi_{o,i}(u) = sum_j W[o, i*J + j] b_j(u) with u = LayerNorm(x)_i. LayerNorm mixes the
  inputs, so these functions are plotted against the *normalised* input u_i, not x_i.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kanvision.layers import BSplineKAN, RSWAFKAN


def kan_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (BSplineKAN, RSWAFKAN))]


def capture_inputs(model: nn.Module, layer: nn.Module, x: torch.Tensor, max_rows: int = 4096) -> torch.Tensor:
    """The layer's inputs (rows, in_features) during `model(x)`; for RSWAF, the LayerNorm output."""
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
    if isinstance(layer, RSWAFKAN):
        with torch.no_grad():
            rows = layer.layernorm(rows)
    return rows


def edge_values(layer: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """phi_{o,i}(u[:, i]) for all edges: (N, out, in)."""
    with torch.no_grad():
        if isinstance(layer, BSplineKAN):
            spline = torch.einsum("nim,oim->noi", layer.b_splines(u), layer.scaled_spline_weight)
            return spline + layer.base_weight[None] * layer.base_activation(u)[:, None, :]
        if isinstance(layer, RSWAFKAN):
            b = layer.rbf(u)  # (N, in, J)
            w = layer.spline_linear.weight.view(layer.out_features, layer.in_features, layer.num_grids)
            return torch.einsum("nij,oij->noi", b, w)
    raise TypeError(f"spline plots need a BSplineKAN or RSWAFKAN layer, got {type(layer).__name__}")


def knots_of(layer: nn.Module, i: int) -> torch.Tensor:
    return layer.grid[i].detach().cpu() if isinstance(layer, BSplineKAN) else layer.rbf.grid.detach().cpu()


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
        knots = knots_of(layer, i)
        if isinstance(layer, BSplineKAN):  # the knots inside which the bases sum to one
            lo, hi = float(knots[layer.spline_order]), float(knots[-layer.spline_order - 1])
        else:
            lo, hi = float(knots.min()), float(knots.max())
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
    xlabel = "input x_i" if isinstance(layer, BSplineKAN) else "normalised input LayerNorm(x)_i"
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
