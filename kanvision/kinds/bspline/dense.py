"""Dense B-spline feature kernels written for a compiler: every element of the (N, 1 + G + k, in) feature
tensor is computed on its own from x and small per-layer tables, with no gather, scatter or host sync.

These are what `torch.compile` turns into one vectorised loop (the layer's `compile` switch), and what a
compiled model (`torch.compile(model)`), `torch.export` or a meta-device forward trace through. Slot 0 of
the middle axis is the base activation act(x); slot 1 + m is basis B_m(x).

Slot-major layout (N, slot, in): the innermost axis is the input axis, contiguous in x, in the tables and
in the output, so the generated loop is one long vector loop. With the input-major (N, in, slot) layout of
the eager kernels the generated inner loop runs over the 9 slots, a 16-lane vector 9 lanes full, which made
the general-knot kernel several times slower. The caller permutes the weight (a small copy) to match.

- Uniform knots: basis m is the cardinal B-spline of u = (x - g_m) / h, a fixed order-k polynomial on
  each unit piece of u (coefficients from `uniform_local_coefficients`). Measuring u from each basis's
  own first knot keeps it small, so frac(u) is as exact as a gather-based kernel's.
- Any non-decreasing knots (after `update_grid`): Cox-de Boor for basis m alone, from its k + 2 knots,
  with the reciprocals of every knot difference precomputed per layer (0 where knots repeat).

Precision: the arithmetic runs in float32 (float64 for float64 inputs) whatever the storage dtype; see
`compute_dtype`. Only the finished values are rounded to the feature dtype the matmul consumes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kanvision.kinds.bspline.basis import _coefficients_exact

__all__ = ["activation_kind", "activation_value", "activation_derivative", "compute_dtype",
           "dense_tables", "dense_features", "dense_input_grad"]

# Python floats, so a compiler bakes them into the kernel as constants (read from a dict, not computed, when traced).
_COEFF_ROWS = {k: tuple(tuple(float(c) for c in row) for row in _coefficients_exact(k)) for k in range(1, 8)}

def activation_kind(module: nn.Module) -> str:
    """The kernel name of an activation module (those with a closed-form derivative, the only ones the
    compiled / traced kernels run), or "module" for any other."""
    if type(module) is nn.SiLU:
        return "silu"
    if type(module) is nn.GELU:
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    return {nn.ReLU: "relu", nn.Identity: "identity", nn.Tanh: "tanh"}.get(type(module), "module")


def activation_value(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "silu":
        return F.silu(x)
    if kind in ("gelu", "gelu_tanh"):
        return F.gelu(x, approximate="tanh" if kind == "gelu_tanh" else "none")
    if kind == "relu":
        return torch.relu(x)
    if kind == "tanh":
        return torch.tanh(x)
    if kind == "identity":
        return x
    raise ValueError(f"no kernel for activation {kind!r}")


def activation_derivative(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "silu":
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))
    if kind == "gelu":
        return 0.5 * (1 + torch.erf(x * (1 / math.sqrt(2)))) + x * torch.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
    if kind == "gelu_tanh":
        c = math.sqrt(2 / math.pi)
        t = torch.tanh(c * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    if kind == "relu":
        return (x > 0).to(x.dtype)
    if kind == "tanh":
        t = torch.tanh(x)
        return 1 - t * t
    if kind == "identity":
        return torch.ones_like(x)
    raise ValueError(f"no kernel for activation {kind!r}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype basis arithmetic runs in: float64 stays, everything else is float32.

    Under autocast (or a half-precision input) the knot interval and the fraction f = (x - g_j) / h must not be
    formed in bfloat16: with 8 significant bits, x - g_j loses most of f's digits and inputs near a knot fall
    in the wrong interval. The values are rounded to the low-precision feature dtype only once finished.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def dense_tables(grid: torch.Tensor, order: int, uniform: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer constants of the dense kernels, from the knots alone (tensor ops only: traceable).

    uniform: (lo (1 + nb, in) = each basis's first knot, row 0 unused; inv_h (in,)).
    otherwise: (knots (k + 2, 1 + nb, in): knot g_{m+s} of basis m at [s, 1 + m]; recip (k (k + 1), 1 + nb, in): for
    p = 1..k, s = 0..k - p, the pair 1 / (g_{m+s+p} - g_{m+s}), 1 / (g_{m+s+p+1} - g_{m+s+1}), 0 where the
    knots coincide (the B-spline convention 0/0 = 0)).
    """
    k = int(order)
    dtype = compute_dtype(grid.dtype)
    g = grid.detach().to(dtype)
    nb = g.size(1) - 1 - k
    if uniform:
        # h from the end knots in float64: one rounding, not the accumulated error of a knot difference.
        g64 = grid.detach().to(torch.float64)
        inv_h = ((g.size(1) - 1) / (g64[:, -1] - g64[:, 0])).to(dtype)
        lo = torch.cat([torch.zeros_like(g[:, :1]), g[:, :nb]], 1).t().contiguous()
        return lo, inv_h
    # Row 0 (the base slot) is a zero dummy, so the tables line up with the feature tensor's (1 + nb, in).
    knots = F.pad(torch.stack([g[:, s:s + nb] for s in range(k + 2)]), (1, 0)).transpose(1, 2).contiguous()
    recips = []
    for p in range(1, k + 1):
        for s in range(k - p + 1):
            for a, b in ((s + p, s), (s + p + 1, s + 1)):
                d = knots[a] - knots[b]
                recips.append(torch.where(d > 0, 1 / torch.where(d > 0, d, 1.0), 0.0))
    return knots, torch.stack(recips)


def _cardinal(u: torch.Tensor, order: int, derivative: bool) -> torch.Tensor:
    """The order-k cardinal B-spline at u (or d/du), zero outside [0, k + 1)."""
    k = order
    rows = _COEFF_ROWS[k] if k in _COEFF_ROWS else [[float(c) for c in r] for r in _coefficients_exact(k)]
    piece = torch.floor(u)
    f = u - piece
    out = torch.zeros_like(u)
    for s in range(k + 1):  # u in [s, s + 1): this basis is local basis k - s of that knot interval
        c = rows[k - s]
        if derivative:
            v = c[k] * k if k else 0.0
            for p in range(k - 1, 0, -1):
                v = v * f + c[p] * p
        else:
            v = c[k]
            for p in range(k - 1, -1, -1):
                v = v * f + c[p]
        out = torch.where(piece == s, v, out)
    return out


def _de_boor_dense(x: torch.Tensor, knots: torch.Tensor, recip: torch.Tensor, order: int, derivative: bool):
    """Cox-de Boor for each dense basis from its own k + 2 knots: x (N, 1, in) -> (N, 1 + nb, in)."""
    k = order
    # Knots never decrease, so x in [g_s, g_s+1) is (x >= g_s) - (x >= g_s+1): k + 2 comparisons, not 2k + 2.
    ge = [(x >= knots[s]).to(x.dtype) for s in range(k + 2)]
    b = [ge[s] - ge[s + 1] for s in range(k + 1)]
    r = iter(recip.unbind(0))
    for p in range(1, k + 1):
        last = p == k
        if last and derivative:
            return k * (b[0] * next(r) - b[1] * next(r))
        nxt = []
        for s in range(k - p + 1):
            left, right = next(r), next(r)
            nxt.append((x - knots[s]) * left * b[s] + (knots[s + p + 1] - x) * right * b[s + 1])
        b = nxt
    return b[0]


def _spline_part(x: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor, order: int, uniform: bool,
                 derivative: bool) -> torch.Tensor:
    """(N, 1 + nb, in): the bases (or their d/dx) of x (N, in) in compute precision; slot 0 is for the caller."""
    xc = x.to(ta.dtype).unsqueeze(1)
    if uniform:
        v = _cardinal((xc - ta) * tb, order, derivative)
        if derivative:
            v = v * tb
    else:
        v = _de_boor_dense(xc, ta, tb, order, derivative)
    return v


def dense_features(x: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor, order: int, uniform: bool, act: str,
                   out_dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """[act(x), B(x)] (N, 1 + G + k, in) in out_dtype; written into `out` when given (eager scratch)."""
    xc = x.to(ta.dtype)
    spline = _spline_part(xc, ta, tb, order, uniform, False)
    slot = torch.arange(spline.size(1), device=x.device).unsqueeze(-1)
    value = torch.where(slot == 0, activation_value(xc, act).unsqueeze(1), spline).to(out_dtype)
    # Writing into `out` with copy_ (not torch.cat) lets the compiler store straight into the buffer.
    return value if out is None else out.copy_(value)


def dense_input_grad(x: torch.Tensor, gfeat: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor, order: int,
                     uniform: bool, act: str) -> torch.Tensor:
    """dL/dx (N, in) in x's dtype from the feature gradient gfeat (N, 1 + G + k, in); accumulated in float32."""
    xc = x.to(ta.dtype)
    d = _spline_part(xc, ta, tb, order, uniform, True)
    slot = torch.arange(d.size(1), device=x.device).unsqueeze(-1)
    d = torch.where(slot == 0, activation_derivative(xc, act).unsqueeze(1), d)
    return (gfeat.to(ta.dtype) * d).sum(1).to(x.dtype)
