"""Least-squares fits of B-spline coefficients: the init fit to noise and the grid-update refit.

Both are per-input least-squares problems that share one basis matrix across the `out` edges of that input,
so nothing here is ever (rows x in x out):

- init: all inputs share the same uniform knots, so the minimum-norm fit at the G + 1 interior knots is one
  (G + k) x (G + 1) pseudo-inverse, applied to the (G + 1, in, out) noise in one contraction.
- grid update: the unscaled spline values to preserve are y[n, i, o] = sum_l A_old[n, i, l] c[o, i, l], so
  the least-squares coefficients on the new knots are c_new[o, i] = P_i c[o, i] with the (G + k) x (G + k)
  projection P_i = pinv(A_new_i) A_old_i. It is computed from the Gram matrices A_new^T A_new and
  A_new^T A_old, accumulated over chunks of rows (memory O(chunk x in x knots)), in float64 on the layer's
  device, with an eigenvalue cut-off for rank-deficient inputs (minimum-norm solution, as LAPACK's gelsd).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from kanvision.kinds.bspline.basis import b_spline_basis

__all__ = ["check_update_rows", "init_coefficients", "lstsq_coefficients", "new_knots", "refit_coefficients",
           "refit_projection", "single_thread"]

# Elements of one (rows, in, knots) basis tensor per chunk (16 MB in float64): the temporaries of a chunk
# stay near 100 MB whatever the row count, and each elementwise op is big enough to amortise its dispatch
# and thread barrier (measured here on a loaded 2-core CPU: 2^17 took 13x longer than 2^21 at 2 threads).
CHUNK_ELEMENTS = 1 << 21
# Eigenvalues of a Gram matrix below this fraction of its largest are treated as zero. Rounding leaves the
# null eigenvalues of an exactly rank-deficient Gram (a feature with fewer distinct values than bases)
# near 1e-16 relative; a genuine one at 1e-11 would already mean a singular value ratio of 3e-6.
GRAM_RCOND = 1e-11


@contextmanager
def single_thread():
    """Run small batched LAPACK calls (eigh / SVD of many tiny matrices) on one thread.

    They gain nothing from threads, and on a CPU shared with other jobs MKL/OpenMP threads spin-wait:
    measured here, a (128, 6, 8) batched lstsq took 12-25 s with 2 threads under load and 0.02 s with 1.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _cpu_single_thread(device: torch.device):
    if device.type == "cpu":
        with single_thread():
            yield
    else:
        yield


def fit_device(device: torch.device) -> torch.device:
    # MPS has no float64; the fit is small, so it runs on the CPU there rather than in float32.
    return torch.device("cpu") if device.type == "mps" else device


def pinv_psd(gram: torch.Tensor, rcond: float = GRAM_RCOND) -> torch.Tensor:
    """Batched pseudo-inverse of symmetric positive semi-definite matrices (..., m, m) via eigh."""
    with _cpu_single_thread(gram.device):
        w, v = torch.linalg.eigh(gram)
    keep = w > rcond * w.amax(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    inv_w = torch.where(keep, 1.0 / torch.where(keep, w, torch.ones_like(w)), torch.zeros_like(w))
    return (v * inv_w.unsqueeze(-2)) @ v.transpose(-1, -2)


def _shared_row(grid: torch.Tensor) -> bool:
    return bool((grid == grid[:1]).all())


def _pinv(a: torch.Tensor) -> torch.Tensor:
    with _cpu_single_thread(a.device):
        return torch.linalg.pinv(a)


def init_coefficients(grid: torch.Tensor, order: int, noise: torch.Tensor) -> torch.Tensor:
    """Minimum-norm coefficients (out, in, G + k) interpolating noise (G + 1, in, out) at the interior knots.

    One pseudo-inverse when every input has the same knots (always at construction), else one per input.
    Float64 throughout; the caller casts.
    """
    g = grid.detach().to(torch.float64)
    points = g.T[order:-order]  # (G + 1, in): the knots of grid_range
    if _shared_row(g):
        basis = b_spline_basis(points[:, :1], g[:1], order)[:, 0]  # (G + 1, G + k)
        return torch.einsum("mp,pio->oim", _pinv(basis), noise.to(g.device, torch.float64))
    basis = b_spline_basis(points, g, order).transpose(0, 1)  # (in, G + 1, G + k)
    return torch.einsum("imp,pio->oim", _pinv(basis), noise.to(g.device, torch.float64))


def _row_chunks(x: torch.Tensor, width: int):
    step = max(1, CHUNK_ELEMENTS // max(1, x.size(1) * width))
    return x.split(step)


def _knot_tables(grid: torch.Tensor, order: int) -> list[tuple[torch.Tensor, ...]]:
    """Per Cox-de Boor level: left/right knots and reciprocal spans (0 for repeated knots, the B-spline
    0/0 := 0 convention), so a level costs a few multiplies instead of divisions and masks."""
    tables = []
    for k in range(1, order + 1):
        lo, hi = grid[:, : -(k + 1)], grid[:, k + 1:]
        spans_l, spans_r = grid[:, k:-1] - lo, hi - grid[:, 1:-k]
        inv_l = torch.where(spans_l > 0, 1.0 / torch.where(spans_l > 0, spans_l, 1.0), 0.0)
        inv_r = torch.where(spans_r > 0, 1.0 / torch.where(spans_r > 0, spans_r, 1.0), 0.0)
        tables.append((lo, hi, inv_l, inv_r))
    return tables


def _bases(x: torch.Tensor, grid: torch.Tensor, tables) -> torch.Tensor:
    """Same values as bspline_basis.b_spline_basis (N, in, m) for finite x, with in-place level updates."""
    x = x.unsqueeze(-1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for lo, hi, inv_l, inv_r in tables:
        left = (x - lo).mul_(inv_l).mul_(bases[..., :-1])
        right = (hi - x).mul_(inv_r)
        bases = left.addcmul_(right, bases[..., 1:])
    return bases


def _gram(x: torch.Tensor, grid: torch.Tensor, order: int, other: torch.Tensor | None = None):
    """A^T A (in, m, m) and, with `other` knots, A^T A_other, for A the bases of x on `grid`; row-chunked."""
    n_in, width = grid.shape
    m = width - 1 - order
    tables = _knot_tables(grid, order)
    other_tables = None if other is None else _knot_tables(other, order)
    gram = grid.new_zeros(n_in, m, m)
    cross = None if other is None else grid.new_zeros(n_in, m, other.size(1) - 1 - order)
    for chunk in _row_chunks(x, width):
        chunk = chunk.to(grid.dtype)
        a = _bases(chunk, grid, tables)  # (rows, in, m)
        b = None if other is None else _bases(chunk, other, other_tables)
        # `in` tiny GEMMs: threads only add a barrier per matrix (seconds when the CPU is oversubscribed).
        with _cpu_single_thread(a.device):
            gram += torch.einsum("nim,nil->iml", a, a)
            if b is not None:
                cross += torch.einsum("nim,nil->iml", a, b)
    return gram, cross


def refit_projection(x: torch.Tensor, old_grid: torch.Tensor, new_grid: torch.Tensor, order: int) -> torch.Tensor:
    """P (in, m_new, m_old), float64: P[i] @ c maps old coefficients of input i to the least-squares
    (minimum-norm) coefficients on new_grid of the same spline sampled at x[:, i]."""
    device = fit_device(new_grid.device)
    old, new = (g.detach().to(device, torch.float64) for g in (old_grid, new_grid))
    gram, cross = _gram(x.detach().to(device), new, order, other=old)
    return pinv_psd(gram) @ cross


def refit_coefficients(x: torch.Tensor, old_grid: torch.Tensor, new_grid: torch.Tensor, order: int,
                       coeff: torch.Tensor) -> torch.Tensor:
    """Coefficients (out, in, m) on new_grid whose splines best match, on the rows x, those of `coeff` on
    old_grid (float64 least squares, in coeff's dtype and device)."""
    p = refit_projection(x, old_grid, new_grid, order)
    c = coeff.detach().to(p.device, torch.float64)
    return torch.einsum("iml,oil->oim", p, c).to(coeff.device, coeff.dtype).contiguous()


def lstsq_coefficients(x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """Least-squares (minimum-norm) c (out, in, m), float64, with sum_m c[o,i,m] B_m(x[:, i]) ~= y[:, i, o]."""
    device = fit_device(grid.device)
    g = grid.detach().to(device, torch.float64)
    x = x.detach().to(device, torch.float64)
    y = y.detach().to(device, torch.float64)
    a = b_spline_basis(x, g, order).transpose(0, 1)  # (in, N, m)
    gram = a.transpose(1, 2) @ a
    rhs = a.transpose(1, 2) @ y.transpose(0, 1)  # (in, m, out)
    return (pinv_psd(gram) @ rhs).permute(2, 0, 1)


def check_update_rows(layer, x: torch.Tensor) -> torch.Tensor:
    """x as (N, in) if a grid update can use it, else ValueError (the grid is then left unchanged)."""
    layer._check_input(x)
    x = x.reshape(-1, layer.in_features)
    if not torch.isfinite(x).all():
        raise ValueError("BSplineKAN.update_grid: the batch contains NaN or inf; the grid was left unchanged")
    n = x.size(0)
    if n < 2:
        raise ValueError(f"BSplineKAN.update_grid: needs at least 2 samples, got {n}")
    return x


def new_knots(x: torch.Tensor, grid_size: int, order: int, grid_eps: float, margin: float) -> torch.Tensor:
    """Knots (in, G + 2k + 1) in x's dtype: a grid_eps mix of uniform knots over [min - margin, max + margin]
    and sample quantiles (KAN paper, sec. 2.5), extended by k uniform steps each side."""
    n = x.size(0)
    x_sorted = torch.sort(x, dim=0).values
    idx = torch.linspace(0, n - 1, grid_size + 1, device=x.device).round().long()
    grid_adaptive = x_sorted[idx]
    uniform_step = (x_sorted[-1] - x_sorted[0] + 2 * margin) / grid_size
    steps = torch.arange(grid_size + 1, dtype=x.dtype, device=x.device).unsqueeze(1)
    grid_uniform = steps * uniform_step + x_sorted[0] - margin
    grid = grid_eps * grid_uniform + (1 - grid_eps) * grid_adaptive
    k = torch.arange(1, order + 1, dtype=x.dtype, device=x.device).unsqueeze(1)
    grid = torch.cat([grid[:1] - uniform_step * k.flip(0), grid, grid[-1:] + uniform_step * k], dim=0)
    return grid.T.contiguous()
