"""B-spline basis math shared by the layer, its fast kernels and the grid fit: knots, the Cox-de Boor
reference, and the exact local polynomial form of uniform cardinal B-splines."""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from math import comb, factorial
from typing import Sequence

import torch

__all__ = ["b_spline_basis", "grid_is_uniform", "uniform_basis", "uniform_knots", "uniform_local_coefficients"]


def uniform_knots(in_features: int, grid_size: int, spline_order: int, grid_range: Sequence[float],
                  dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """Knot vector per input: grid_size intervals on grid_range, extended by spline_order steps each side."""
    lo, hi = float(grid_range[0]), float(grid_range[1])
    h = (hi - lo) / grid_size
    # Built in float64 then cast, so the knots are the same whatever the layer's dtype.
    steps = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float64)
    knots = (steps * h + lo).to(dtype=dtype or torch.get_default_dtype(), device=device)
    return knots.expand(in_features, -1).contiguous()


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # Repeated knots give 0/0 terms; the B-spline convention is that such a term is zero.
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def b_spline_basis(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """Cox-de Boor recursion over all bases: reference path, valid for any non-decreasing knots.

    x: (N, in), grid: (in, K) knots -> (N, in, K - 1 - spline_order). Half-open intervals, so every basis is
    zero outside [grid[:, 0], grid[:, -1]) and the bases sum to one on the interior range.
    """
    x = x.unsqueeze(-1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for k in range(1, spline_order + 1):
        left = _safe_div(x - grid[:, : -(k + 1)], grid[:, k:-1] - grid[:, : -(k + 1)])
        right = _safe_div(grid[:, k + 1:] - x, grid[:, k + 1:] - grid[:, 1:-k])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases



def uniform_basis(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """`b_spline_basis` for evenly spaced knots, through the local polynomial form in plain autograd ops.

    On knot interval j only bases j - k .. j are non-zero, each a fixed order-k polynomial of the position f in
    the interval (`uniform_local_coefficients`): k + 1 values per input are computed and scattered into the
    (N, in, G + k) output. Same function as the recursion (half-open support, zero outside the knots); its
    first and second derivatives go through k + 1 polynomials instead of k levels of the full-width recursion,
    which makes Hessian-vector products ~3x cheaper (measured on a 128 -> 128 layer, 4,096 rows, CPU).
    """
    k = int(spline_order)
    n_int = grid.size(1) - 1
    nb = n_int - k
    g64 = grid.detach().to(torch.float64)
    inv_h = (n_int / (g64[:, -1] - g64[:, 0])).to(x.dtype)
    t = (x - grid[:, 0].detach()) * inv_h
    j = torch.floor(t).detach()
    f = t - j
    powers = torch.stack([torch.ones_like(f), f] + [f ** p for p in range(2, k + 1)], -1)[..., :k + 1]
    local = powers @ uniform_local_coefficients(k, dtype=x.dtype, device=x.device).t()  # (N, in, k + 1)
    idx = j.long().unsqueeze(-1) - k + torch.arange(k + 1, device=x.device)
    inside = ((j >= 0) & (j < n_int)).unsqueeze(-1) & (idx >= 0) & (idx < nb)
    out = torch.zeros(*x.shape, nb, dtype=x.dtype, device=x.device)
    return out.scatter_add(-1, idx.clamp(0, nb - 1), torch.where(inside, local, torch.zeros_like(local)))


@lru_cache(maxsize=None)
def _coefficients_exact(order: int) -> tuple[tuple[Fraction, ...], ...]:
    # Cardinal B-spline N_k(u) = 1/k! sum_i (-1)^i C(k+1, i) (u - i)_+^k on [0, k + 1]. Local basis q covers
    # u = f + (k - q) with f in [0, 1): only the terms i <= k - q are active there.
    k = order
    rows = []
    for q in range(k + 1):
        s = k - q
        coeff = [Fraction(0)] * (k + 1)
        for i in range(s + 1):
            a = s - i  # (f + a)^k expanded in powers of f
            for p in range(k + 1):
                coeff[p] += Fraction((-1) ** i * comb(k + 1, i) * comb(k, p) * a ** (k - p), factorial(k))
        rows.append(tuple(coeff))
    return tuple(rows)


def uniform_local_coefficients(order: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """C (order+1, order+1): on a uniform grid B_{j-k+q}(x) = sum_p C[q, p] f^p, f = frac((x - g_0) / h)."""
    return torch.tensor([[float(c) for c in row] for row in _coefficients_exact(int(order))], dtype=dtype,
                        device=device)


def grid_is_uniform(grid: torch.Tensor) -> bool:
    """True when every row of knots is evenly spaced up to the rounding of the layer's dtype."""
    g = grid.detach().to(torch.float64)
    steps = torch.arange(g.size(1), dtype=torch.float64, device=g.device)
    h = (g[:, -1] - g[:, 0]) / (g.size(1) - 1)
    if not bool((h > 0).all()):
        return False
    err = (g - (g[:, :1] + steps * h.unsqueeze(1))).abs().max()
    # A few ulps of the largest knot: uniform_knots rounds float64 knots to the layer dtype.
    tol = 8 * torch.finfo(grid.dtype).eps * max(1.0, float(g.abs().max()))
    return bool(err <= tol)
