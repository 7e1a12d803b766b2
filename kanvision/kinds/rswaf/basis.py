"""RSWAF basis math shared by the layer and its kernels.

    b_j(u) = 1 - tanh((u - c_j) / h)^2,   d b_j / d u = -2 t_j (1 - t_j^2) / h,   t_j = tanh((u - c_j) / h)
"""
from __future__ import annotations

import torch

__all__ = ["dense_basis", "dense_basis_backward", "rswaf_basis"]


def rswaf_basis(u: torch.Tensor, centres: torch.Tensor, denominator: torch.Tensor | float) -> torch.Tensor:
    """b_j(u) = 1 - tanh((u - c_j) / h)^2 for every centre: (...,) -> (..., num_centres). Reference form."""
    t = torch.tanh((u.unsqueeze(-1) - centres) / denominator)
    return 1 - t * t


def _sech2_tanh(u, centres, inv_h):
    # From one exp: with e = exp(-2|z|), 1 - tanh(z)^2 = 4e / (1 + e)^2 and |tanh(z)| = (1 - e) / (1 + e).
    # A vectorised exp is ~3x cheaper than tanh on the CPU (12.6M values: 4.5 ms vs 14 ms), and nothing
    # overflows: e <= 1. Float32 arithmetic for half-precision inputs (see bspline_dense.compute_dtype).
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    z = (u.to(dtype).unsqueeze(-1) - centres.to(dtype)) * inv_h.to(dtype)
    e = torch.exp(-2 * z.abs())
    r = 1 / (1 + e)
    return 4 * e * r * r, torch.where(z < 0, e - 1, 1 - e) * r


def dense_basis(u, centres, inv_h, out_dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """The (N, in, G) basis in out_dtype; written into `out` when given (eager scratch)."""
    b = _sech2_tanh(u, centres, inv_h)[0].to(out_dtype)
    return b if out is None else out.copy_(b)


def dense_basis_backward(u, gbuf, centres, inv_h, out: torch.Tensor | None = None):
    """(basis in gbuf's dtype, dL/du in u's dtype) from the basis gradient gbuf (N, in, G); float32 accumulation."""
    b, t = _sech2_tanh(u, centres, inv_h)
    gu = (gbuf.to(b.dtype) * b * t).sum(-1) * (-2 * inv_h.to(b.dtype))
    b = b.to(gbuf.dtype)
    return (b if out is None else out.copy_(b)), gu.to(u.dtype)
