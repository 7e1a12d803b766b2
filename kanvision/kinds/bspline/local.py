"""Eager B-spline kernels: only the order + 1 non-zero bases per input, scattered into the feature buffer.

On a knot interval [g_j, g_j+1) exactly the bases B_{j-k} .. B_j of order k are non-zero. Uniform knots:
with t = (x - g_0) / h, j = floor(t), f = t - j, basis B_{j-k+q} is a fixed order-k polynomial of f
(`uniform_local_coefficients`, derived exactly from the truncated-power form of the cardinal B-spline).
Non-uniform knots (after `update_grid`): per-feature `searchsorted` for j, then the local de Boor triangle
(The NURBS Book, A2.2) over those k + 1 bases. This is the path when kernels are not compiled; it does
far fewer flops than the dense kernels but many small ops, which a compiler would fuse better.

Arithmetic runs in `compute_dtype` (float32 for half-precision inputs); the finished values are written in
the feature buffer's dtype.
"""
from __future__ import annotations

import torch
from torch import nn

from kanvision.kinds.bspline.basis import uniform_local_coefficients
from kanvision.kinds.bspline.dense import activation_derivative, activation_value, compute_dtype, dense_tables
from kanvision.kinds.workspace import scratch

__all__ = ["SplineSpec", "local_bases", "features_eager", "input_grad_eager"]


class SplineSpec:
    """What the kernel needs to know about one layer's grid, resolved once per grid change."""

    def __init__(self, grid: torch.Tensor, order: int, uniform: bool):
        grid = grid.detach().to(compute_dtype(grid.dtype)).contiguous()
        self.grid, self.order, self.uniform = grid, int(order), bool(uniform)
        self.num_bases = grid.size(1) - 1 - self.order
        self.dense = dense_tables(grid, self.order, self.uniform)  # the compiled kernels' tables
        if self.uniform:
            n_int = grid.size(1) - 1
            g64 = grid.detach().to(torch.float64)
            self.g0 = grid[:, 0].detach().clone()
            self.row_offset = torch.arange(grid.size(0), device=grid.device) * grid.size(1)
            self.inv_h = (n_int / (g64[:, -1] - g64[:, 0])).to(grid.dtype)
            c64 = uniform_local_coefficients(self.order)
            self.coeff_t = c64.t().reshape(self.order + 1, self.order + 1, 1, 1).to(grid.dtype).to(grid.device)
            powers = torch.arange(1, self.order + 1, dtype=torch.float64)
            self.dcoeff_t = (c64[:, 1:] * powers).t().reshape(self.order, self.order + 1, 1, 1).to(
                grid.dtype).to(grid.device)
            # Dense column of local basis q on interval j (0 = none); row nb + k is the "outside" sentinel.
            j = torch.arange(n_int + 1).unsqueeze(0)
            m = j - self.order + torch.arange(self.order + 1).unsqueeze(1)
            valid = (m >= 0) & (m < self.num_bases) & (j < n_int)
            self.col_table = torch.where(valid, m + 1, 0).to(grid.device)
            self.col_offset = (torch.arange(self.order + 1) * (n_int + 1)).view(-1, 1, 1).to(grid.device)
        else:
            # Replicated end knots let every interval read its 2k + 2 neighbouring knots; the extra bases they create are
            # masked, and de Boor's denominators stay > 0 on any non-empty interval.
            k = self.order
            self.knots = torch.cat([grid[:, :1].expand(-1, k), grid, grid[:, -1:].expand(-1, k + 1)], 1).detach()


def _uniform_local(x: torch.Tensor, spec: SplineSpec, derivative: bool):
    """(col, w, dw), each (k+1, N, in): local basis q on axis 0. Not masked: an input outside the extended
    grid gets the sentinel interval whose columns are all slot 0, and f is clamped to [0, 1] so w and dw stay
    finite there (callers overwrite / zero slot 0). Few, in-place, contiguous ops: on a shared CPU every op
    pays a thread-synchronisation toll, and a length-(k+1) innermost axis would not vectorise."""
    k, nb = spec.order, spec.num_bases
    t = (x - spec.g0).mul_(spec.inv_h)
    inside = (t >= 0).logical_and_(t < nb + k)  # half-open, like the reference
    j = torch.where(inside, t.floor_(), float(nb + k)).to(torch.long)
    # f measured from the stored knot, not as t - j: x - g_j is nearly exact, while t carries the rounding
    # of x - g_0 amplified by 1/h (an error of ~1e-6 in float32 for 10 intervals).
    f = torch.sub(x, torch.take(spec.grid, j + spec.row_offset)).mul_(spec.inv_h).clamp_(0, 1).unsqueeze(0)
    c = spec.coeff_t  # (k+1 powers, k+1 bases, 1, 1): Horner over all local bases at once
    w = torch.addcmul(c[k - 1], c[k], f)
    for p in range(k - 2, -1, -1):
        w.mul_(f).add_(c[p])
    dw = None
    if derivative:
        d = spec.dcoeff_t
        dw = torch.addcmul(d[k - 2], d[k - 1], f) if k > 1 else d[0].expand_as(w).clone()
        for p in range(k - 3, -1, -1):
            dw.mul_(f).add_(d[p])
    col = torch.take(spec.col_table, j.unsqueeze(0) + spec.col_offset)
    return col, w, dw


def _nonuniform_local(x: torch.Tensor, spec: SplineSpec, derivative: bool):
    k, grid = spec.order, spec.grid
    n_knots = grid.size(1)
    j = torch.searchsorted(grid, x.detach().t().contiguous(), right=True).t() - 1
    inside = (j >= 0) & (j <= n_knots - 2)
    j = j.clamp(0, n_knots - 2)
    # T[..., s] = g_{j + s - k}, s = 0 .. 2k + 1 (indices shifted by the k padded knots)
    offs = torch.arange(2 * k + 2, device=x.device)
    idx = (j.unsqueeze(-1) + offs)
    T = torch.gather(spec.knots.unsqueeze(0).expand(x.size(0), -1, -1), 2, idx).unbind(-1)
    bases = [torch.ones_like(x)]
    lower = bases
    for p in range(1, k + 1):
        left = [None] + [x - T[k + 1 - r] for r in range(1, p + 1)]
        right = [None] + [T[k + r] - x for r in range(1, p + 1)]
        new, saved = [], torch.zeros_like(x)
        for r in range(p):
            temp = bases[r] / (right[r + 1] + left[p - r])
            new.append(saved + right[r + 1] * temp)
            saved = left[p - r] * temp
        new.append(saved)
        lower, bases = bases, new
    w = bases
    dw = None
    if derivative:
        # B'_{m,k} = k (B_{m,k-1} / (g_{m+k} - g_m) - B_{m+1,k-1} / (g_{m+k+1} - g_{m+1})), m = j - k + q
        zero = torch.zeros_like(x)
        lo = [zero] + lower + [zero]
        terms = []
        for q in range(k + 1):
            d1, d2 = T[q + k] - T[q], T[q + k + 1] - T[q + 1]
            a = torch.where(d1 > 0, lo[q] / torch.where(d1 > 0, d1, 1.0), 0.0)
            b = torch.where(d2 > 0, lo[q + 1] / torch.where(d2 > 0, d2, 1.0), 0.0)
            terms.append(k * (a - b))
        dw = terms
    return j, inside, w, dw


def local_bases(x: torch.Tensor, spec: SplineSpec, derivative: bool = False):
    """(col, w, dw), each (k+1, N, in) for local basis q = 0..k: the dense column 1 + m (0 where that basis
    does not exist: slot 0 is overwritten / zeroed by the caller), its value and, if asked, d/dx."""
    if spec.uniform:
        return _uniform_local(x, spec, derivative)
    k, nb = spec.order, spec.num_bases
    j, inside, w, dw = _nonuniform_local(x, spec, derivative)
    m = j.unsqueeze(0) + torch.arange(-k, 1, device=x.device).view(-1, 1, 1)
    valid = inside & (m >= 0) & (m < nb)
    col = torch.where(valid, m + 1, 0)
    w = torch.where(valid, torch.stack(w), 0.0)
    dw = torch.where(valid, torch.stack(dw), 0.0) if dw is not None else None
    return col, w, dw


def _activation_and_grad(x: torch.Tensor, act: nn.Module, kind: str, grad: torch.Tensor | None):
    if kind != "module":
        return activation_value(x, kind) if grad is None else grad * activation_derivative(x, kind)
    if grad is None:
        return act(x)
    with torch.enable_grad():  # any other elementwise activation: its own autograd on the (N, in) input
        xr = x.detach().requires_grad_()
        return torch.autograd.grad(act(xr), xr, grad)[0]


def features_eager(x: torch.Tensor, spec: SplineSpec, act: nn.Module, kind: str,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense (N, in, 1 + G + k) in the scratch buffer: slot 0 = act(x), slot 1 + m = B_m(x); one zero fill +
    one scatter."""
    out_dtype = out_dtype or x.dtype
    x = x.to(spec.grid.dtype)
    buf = scratch((x.size(0), x.size(1), 1 + spec.num_bases), out_dtype, x.device).zero_()
    col, w, _ = local_bases(x, spec)
    buf.scatter_(2, col.permute(1, 2, 0), w.permute(1, 2, 0).to(out_dtype))
    buf[..., 0] = _activation_and_grad(x, act, kind, None)  # after the scatter: invalid bases were parked in slot 0
    return buf


def input_grad_eager(x: torch.Tensor, gbuf: torch.Tensor, spec: SplineSpec, act: nn.Module,
                     kind: str) -> torch.Tensor:
    """dL/dx from the feature gradient gbuf (N, in, 1 + G + k), which is overwritten; float32 accumulation."""
    x_dtype, x = x.dtype, x.to(spec.grid.dtype)
    gx = _activation_and_grad(x, act, kind, gbuf[..., 0].to(x.dtype))
    gbuf[..., 0] = 0  # local bases that do not exist were parked on slot 0: they must gather zero
    col, _, dw = local_bases(x, spec, derivative=True)
    g = torch.gather(gbuf, 2, col.permute(1, 2, 0)).permute(2, 0, 1).to(x.dtype)
    spline = g.mul_(dw).sum(0)
    gx = gx.add_(spline.mul_(spec.inv_h) if spec.uniform else spline)  # uniform dw is d/df: times df/dx
    return gx.to(x_dtype)
