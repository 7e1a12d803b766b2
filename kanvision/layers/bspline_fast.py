"""Fast B-spline KAN kernel: only the order + 1 non-zero bases per input, no dense basis kept for backward.

On a knot interval [g_j, g_j+1) exactly the bases B_{j-k} .. B_j of order k are non-zero. Uniform knots:
with t = (x - g_0) / h, j = floor(t), f = t - j, basis B_{j-k+q} is a fixed cubic (order-k) polynomial of f,
whose coefficients `uniform_local_coefficients` derives once, exactly, from the truncated-power form of the
cardinal B-spline. Non-uniform knots (after `update_grid`): per-feature `searchsorted` for j, then the local
de Boor triangle (The NURBS Book, A2.2) over those k + 1 bases.

Both branches of the layer go through one matrix product, y = [act(x), B(x)] @ [W_b ; s * c]^T, on a
(N, in, 1 + G + k) feature buffer that lives only for that product (in a reused scratch buffer, see
workspace.py): backward saves x and the weights and rebuilds it. Eager kernels scatter the k + 1 local
weights; compiled ones (uniform grids, SiLU) evaluate every dense element directly, which vectorises.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bspline_basis import b_spline_basis, grid_is_uniform, uniform_local_coefficients
from .compile import compiled_or_eager
from .workspace import scratch

__all__ = ["BSplineKANFunction", "SplineSpec", "grid_is_uniform", "local_bases", "uniform_local_coefficients",
           "features", "input_grad"]


class SplineSpec:
    """What the kernel needs to know about one layer's grid, resolved once per grid change."""

    def __init__(self, grid: torch.Tensor, order: int, uniform: bool, activation: nn.Module,
                 compile: bool = False):
        grid = grid.detach().contiguous()
        self.grid, self.order, self.uniform, self.activation = grid, int(order), bool(uniform), activation
        self.num_bases = grid.size(1) - 1 - self.order
        self.compile = compile
        if self.uniform:
            n_int = grid.size(1) - 1
            g64 = grid.detach().to(torch.float64)
            self.g0 = grid[:, 0].detach().clone()
            self.row_offset = torch.arange(grid.size(0), device=grid.device) * grid.size(1)
            self.inv_h = (n_int / (g64[:, -1] - g64[:, 0])).to(grid.dtype)
            c64 = uniform_local_coefficients(self.order)
            # For the compiled kernels: constants, and each basis's first knot (column 0 = the base slot, unused).
            self.coeff_rows = tuple(tuple(float(v) for v in row) for row in c64.tolist())
            self.lo_knots = torch.cat([torch.zeros_like(grid[:, :1]), grid[:, :self.num_bases]], 1).contiguous()
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


def _silu_derivative(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _activation_and_grad(x: torch.Tensor, act: nn.Module, grad: torch.Tensor | None):
    if grad is None:
        return act(x)
    if isinstance(act, nn.SiLU):
        return grad * _silu_derivative(x)
    with torch.enable_grad():  # any elementwise activation: its own autograd on the (N, in) input
        xr = x.detach().requires_grad_()
        return torch.autograd.grad(act(xr), xr, grad)[0]


def features_eager(x: torch.Tensor, spec: SplineSpec) -> torch.Tensor:
    """Dense (N, in, 1 + G + k) in the scratch buffer: slot 0 = act(x), slot 1 + m = B_m(x); one zero fill +
    one scatter."""
    buf = scratch((x.size(0), x.size(1), 1 + spec.num_bases), x.dtype, x.device).zero_()
    col, w, _ = local_bases(x, spec)
    buf.scatter_(2, col.permute(1, 2, 0), w.permute(1, 2, 0))
    buf[..., 0] = spec.activation(x)  # after the scatter: invalid bases were parked in slot 0
    return buf


def input_grad_eager(x: torch.Tensor, gbuf: torch.Tensor, spec: SplineSpec) -> torch.Tensor:
    gx = _activation_and_grad(x, spec.activation, gbuf[..., 0])
    gbuf[..., 0] = 0  # local bases that do not exist were parked on slot 0: they must gather zero
    col, _, dw = local_bases(x, spec, derivative=True)
    g = torch.gather(gbuf, 2, col.permute(1, 2, 0)).permute(2, 0, 1)
    spline = g.mul_(dw).sum(0)
    return gx.add_(spline.mul_(spec.inv_h) if spec.uniform else spline)  # uniform dw is d/df: times df/dx


def _cardinal(u: torch.Tensor, coeff_rows, order: int, derivative: bool) -> torch.Tensor:
    """The order-k cardinal B-spline (or its derivative) at u = (x - g_m) / h: basis m's value, zero outside
    [0, k + 1). Measuring u from each basis's own first knot keeps it small, so frac(u) is as exact as the
    gather-based eager path's, with no gather: the compiler writes every element in one vectorised pass."""
    k = order
    piece = torch.floor(u)
    f = u - piece
    out = torch.zeros_like(u)
    for s in range(k + 1):  # u in [s, s + 1): basis m is local basis k - s of that knot interval
        c = coeff_rows[k - s]
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


def _features_dense(x, out, lo_knots, inv_h, coeff_rows, order: int):
    # Written into `out` (the scratch buffer) with no torch.cat: a cat makes inductor allocate its own result.
    u = (x.unsqueeze(-1) - lo_knots) * inv_h.unsqueeze(-1)
    slot = torch.arange(lo_knots.size(1), device=x.device)
    return out.copy_(torch.where(slot == 0, F.silu(x).unsqueeze(-1), _cardinal(u, coeff_rows, order, False)))


def _input_grad_dense(x, gbuf, lo_knots, inv_h, coeff_rows, order: int):
    u = (x.unsqueeze(-1) - lo_knots) * inv_h.unsqueeze(-1)
    slot = torch.arange(lo_knots.size(1), device=x.device)
    d = torch.where(slot == 0, _silu_derivative(x).unsqueeze(-1),
                    _cardinal(u, coeff_rows, order, True) * inv_h.unsqueeze(-1))
    return (gbuf * d).sum(-1)


def _compilable(spec: SplineSpec) -> bool:  # the compiled kernels hard-code the SiLU base branch
    return spec.compile and spec.uniform and isinstance(spec.activation, nn.SiLU)


def features(x: torch.Tensor, spec: SplineSpec) -> torch.Tensor:
    """[act(x), B(x)] (N, in, 1 + G + k) in the scratch buffer (valid until the next kernel call)."""
    if _compilable(spec):
        out = scratch((x.size(0), x.size(1), 1 + spec.num_bases), x.dtype, x.device)
        return compiled_or_eager("bspline_features", _features_dense, lambda: features_eager(x, spec), x, out,
                                 spec.lo_knots, spec.inv_h, spec.coeff_rows, spec.order)
    return features_eager(x, spec)


def input_grad(x: torch.Tensor, gbuf: torch.Tensor, spec: SplineSpec) -> torch.Tensor:
    """dL/dx from the feature-buffer gradient gbuf (N, in, 1 + G + k), which may be overwritten."""
    if _compilable(spec):
        return compiled_or_eager("bspline_input_grad", _input_grad_dense, lambda: input_grad_eager(x, gbuf, spec),
                                 x, gbuf, spec.lo_knots, spec.inv_h, spec.coeff_rows, spec.order)
    return input_grad_eager(x, gbuf, spec)


def reference_features(x: torch.Tensor, spec: SplineSpec) -> torch.Tensor:
    """[act(x), B(x)] (N, in, 1 + G + k) through plain autograd ops (Cox-de Boor over all bases)."""
    return torch.cat([spec.activation(x).unsqueeze(-1), b_spline_basis(x, spec.grid, spec.order)], -1)


def _combined_weight(base_weight, spline_weight, spline_scaler) -> torch.Tensor:
    """(out, in * (1 + G + k)): per input [w_b, s * c_0, ..., s * c_{G+k-1}], the feature buffer's layout."""
    scaled = spline_weight if spline_scaler is None else spline_weight * spline_scaler.unsqueeze(-1)
    return torch.cat([base_weight.unsqueeze(-1), scaled], -1).reshape(base_weight.size(0), -1)


class BSplineKANFunction(torch.autograd.Function):
    """(x (N, in), base_weight, spline_weight, spline_scaler or None, spec) -> (N, out).

    Saves only x and the parameters themselves (no (N, in, G + k) tensor, not even the fused weight). A
    backward with create_graph=True (Hessian-vector products) is answered through the reference graph, so
    higher derivatives are exact too (and as slow as the reference)."""

    @staticmethod
    def forward(ctx, x, base_weight, spline_weight, spline_scaler, spec: SplineSpec):
        feats = features(x, spec)
        weight = _combined_weight(base_weight, spline_weight, spline_scaler)
        ctx.save_for_backward(x, base_weight, spline_weight, spline_scaler)
        ctx.spec = spec
        return torch.mm(feats.view(x.size(0), -1), weight.t())

    @staticmethod
    def backward(ctx, grad_out):
        x, base_weight, spline_weight, spline_scaler = ctx.saved_tensors
        spec, need = ctx.spec, ctx.needs_input_grad
        if torch.is_grad_enabled():
            inputs = (x, base_weight, spline_weight, spline_scaler)
            weight = _combined_weight(base_weight, spline_weight, spline_scaler)
            out = torch.mm(reference_features(x, spec).reshape(x.size(0), -1), weight.t())
            grads = iter(torch.autograd.grad(out, [t for t, n in zip(inputs, need) if n], grad_out,
                                             create_graph=True))
            return (*[next(grads) if n else None for n in need[:4]], None)
        grad_out = grad_out.contiguous()
        n = x.size(0)
        gx = gbw = gsw = gsc = None
        feats = features(x, spec)
        if need[1] or need[2] or need[3]:
            gw = torch.mm(grad_out.t(), feats.view(n, -1)).view(base_weight.size(0), base_weight.size(1), -1)
            gbw = gw[..., 0] if need[1] else None
            gs = gw[..., 1:]
            if need[2]:
                gsw = gs if spline_scaler is None else gs * spline_scaler.unsqueeze(-1)
            if need[3]:
                gsc = (gs * spline_weight).sum(-1)
        if need[0]:
            weight = _combined_weight(base_weight, spline_weight, spline_scaler)
            torch.mm(grad_out, weight, out=feats.view(n, -1))  # features no longer needed: reuse the memory
            gx = input_grad(x, feats, spec)
        return gx, gbw, gsw, gsc, None
