"""Fused Triton kernels of the RSWAF KAN layer (CUDA; tested on the CPU under TRITON_INTERPRET=1).

    y = B(u) W^T,   B(u)[n, i, j] = b_j(u[n, i]) = 1 - tanh((u[n, i] - c_j) / h)^2,   u = LayerNorm(x)

W is the layer's `spline_linear.weight` (out, in * G), column i * G + j, read in place through strides. LayerNorm
runs outside (the kernels take u). The tiling is the B-spline kernels' (`bspline.triton`; the tile tables and
launch helpers both use are in `kinds.triton_common`): the basis of each (rows, inputs) tile is evaluated in
registers for one centre at a time and consumed by tl.dot at once, never written to memory.

- forward: program = (BLOCK_M rows, BLOCK_O outputs) of y; per input block and centre j, acc += b_j(u) W_j^T.
- input gradient: program = (BLOCK_M, BLOCK_I) of du; per centre, G_j = dy W_j (K-loop over outputs, fp32),
  du += G_j * b_j'(u) with b_j'(u) = -2 t_j (1 - t_j^2) / h.
- weight gradient: program = (BLOCK_I, BLOCK_O) tile of dW_j for one centre, looping over rows (split in row ranges
  with partial tiles summed by torch when the grid would not fill the GPU: no atomics).

1 - tanh(z)^2 and tanh(z) come from one exp: with e = exp(-2|z|) <= 1, sech^2 z = 4e / (1 + e)^2 and
|tanh z| = (1 - e) / (1 + e) (as `rswaf.basis._sech2_tanh`). Arithmetic in float32 (float64 for float64 u, the
interpreter tests), basis rounded to the weight's dtype for tl.dot, fp32 accumulation.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kanvision.kinds.triton_common import INTERPRETED, autotuned_kernels, dot, dot_options, launch, row_splits

__all__ = ["INTERPRETED", "forward", "input_grad", "weight_grad"]


@triton.jit
def _basis(u, c, inv_h, DERIV: tl.constexpr):
    z = (u - c) * inv_h
    e = tl.exp(-2.0 * tl.abs(z))
    r = 1.0 / (1.0 + e)
    b = 4.0 * e * r * r
    if DERIV:
        t = tl.where(z < 0, e - 1.0, 1.0 - e) * r
        b = -2.0 * inv_h * t * b
    return b


@triton.jit
def _forward_kernel(u_ptr, w_ptr, c_ptr, ih_ptr, y_ptr, n_rows, n_in, n_out, sun, sui, swo, swj, swi, syn, syo,
                    CENTRES: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    inv_h = tl.load(ih_ptr)
    acc = tl.zeros((BLOCK_M, BLOCK_O), dtype=ih_ptr.dtype.element_ty)
    for i0 in range(0, n_in, BLOCK_I):
        cols = i0 + tl.arange(0, BLOCK_I)
        um = (rows[:, None] < n_rows) & (cols[None, :] < n_in)
        u = tl.load(u_ptr + rows[:, None].to(tl.int64) * sun + cols[None, :] * sui, mask=um, other=0.0)
        u = u.to(ih_ptr.dtype.element_ty)
        wm = (cols[:, None] < n_in) & (outs[None, :] < n_out)
        for j in range(CENTRES):
            b = _basis(u, tl.load(c_ptr + j), inv_h, False)
            w = tl.load(w_ptr + outs[None, :] * swo + j * swj + cols[:, None] * swi, mask=wm, other=0.0)
            acc = dot(b.to(w_ptr.dtype.element_ty), w, acc, PREC, DOT_F32)
    ym = (rows[:, None] < n_rows) & (outs[None, :] < n_out)
    tl.store(y_ptr + rows[:, None].to(tl.int64) * syn + outs[None, :] * syo, acc.to(y_ptr.dtype.element_ty), mask=ym)


@triton.jit
def _input_grad_kernel(u_ptr, g_ptr, w_ptr, c_ptr, ih_ptr, du_ptr, n_rows, n_in, n_out, sun, sui, sgn, sgo,
                       swo, swj, swi, CENTRES: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    um = (rows[:, None] < n_rows) & (cols[None, :] < n_in)
    uoff = rows[:, None].to(tl.int64) * sun + cols[None, :] * sui
    u = tl.load(u_ptr + uoff, mask=um, other=0.0).to(ih_ptr.dtype.element_ty)
    inv_h = tl.load(ih_ptr)
    du = tl.zeros((BLOCK_M, BLOCK_I), dtype=ih_ptr.dtype.element_ty)
    for j in range(CENTRES):  # a runtime loop, as bspline.triton's input gradient (unrolled, it spilled registers)
        gj = tl.zeros((BLOCK_M, BLOCK_I), dtype=ih_ptr.dtype.element_ty)
        for o0 in range(0, n_out, BLOCK_O):
            outs = o0 + tl.arange(0, BLOCK_O)
            gm = (rows[:, None] < n_rows) & (outs[None, :] < n_out)
            g = tl.load(g_ptr + rows[:, None].to(tl.int64) * sgn + outs[None, :] * sgo, mask=gm, other=0.0)
            wm = (outs[:, None] < n_out) & (cols[None, :] < n_in)
            w = tl.load(w_ptr + outs[:, None] * swo + j * swj + cols[None, :] * swi, mask=wm, other=0.0)
            gj = dot(g, w, gj, PREC, DOT_F32)
        du += gj * _basis(u, tl.load(c_ptr + j), inv_h, True)
    tl.store(du_ptr + uoff, du.to(du_ptr.dtype.element_ty), mask=um)


@triton.jit
def _weight_grad_kernel(u_ptr, g_ptr, c_ptr, ih_ptr, dw_ptr, n_rows, n_in, n_out, rows_per_split, sun, sui, sgn, sgo,
                        CENTRES: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    # dw: (splits, CENTRES, in, out) contiguous partial sums; program axis 0 = centre x input block.
    blocks_i = tl.cdiv(n_in, BLOCK_I)
    j = tl.program_id(0) // blocks_i
    cols = (tl.program_id(0) % blocks_i) * BLOCK_I + tl.arange(0, BLOCK_I)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    split = tl.program_id(2)
    start = split * rows_per_split
    end = tl.minimum(start + rows_per_split, n_rows)
    c = tl.load(c_ptr + j)
    inv_h = tl.load(ih_ptr)
    acc = tl.zeros((BLOCK_I, BLOCK_O), dtype=ih_ptr.dtype.element_ty)
    for n0 in range(start, end, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        um = (rows[:, None] < end) & (cols[None, :] < n_in)
        u = tl.load(u_ptr + rows[:, None].to(tl.int64) * sun + cols[None, :] * sui, mask=um, other=0.0)
        b = _basis(u.to(ih_ptr.dtype.element_ty), c, inv_h, False)
        gm = (rows[:, None] < end) & (outs[None, :] < n_out)  # rows outside [start, end) read dy = 0
        g = tl.load(g_ptr + rows[:, None].to(tl.int64) * sgn + outs[None, :] * sgo, mask=gm, other=0.0)
        acc = dot(tl.trans(b.to(g_ptr.dtype.element_ty)), g, acc, PREC, DOT_F32)
    base = (split.to(tl.int64) * CENTRES + j) * n_in * n_out
    om = (cols[:, None] < n_in) & (outs[None, :] < n_out)
    tl.store(dw_ptr + base + cols[:, None] * n_out + outs[None, :], acc.to(dw_ptr.dtype.element_ty), mask=om)


# The tile tables the B-spline kernels use too (kinds/triton_common.py).
_FORWARD, _INPUT_GRAD, _WEIGHT_GRAD = autotuned_kernels(_forward_kernel, _input_grad_kernel, _weight_grad_kernel)


def _tables(u: torch.Tensor, centres: torch.Tensor, inv_h: torch.Tensor):
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    return centres.detach().to(dtype).contiguous(), inv_h.detach().to(dtype).reshape(1)


def _weight_strides(weight: torch.Tensor, centres: int) -> tuple[int, int, int]:
    # column i * G + j of (out, in * G): strides of (out, centre j, input i)
    return weight.stride(0), weight.stride(1), centres * weight.stride(1)


def forward(u: torch.Tensor, weight: torch.Tensor, centres: torch.Tensor, inv_h: torch.Tensor,
            out_dtype: torch.dtype | None = None, blocks: dict | None = None) -> torch.Tensor:
    """y (N, out) = B(u) W^T for u (N, in), weight (out, in * G) in the matmul dtype, centres (G,), inv_h = 1 / h
    (a tensor: no host read)."""
    n, n_in = u.shape
    n_out, g = weight.size(0), centres.numel()
    c, ih = _tables(u, centres, inv_h)
    y = torch.empty(n, n_out, dtype=out_dtype or weight.dtype, device=u.device)
    if n == 0:
        return y
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(n_out, meta["BLOCK_O"]))  # noqa: E731
    args = (u, weight, c, ih, y, n, n_in, n_out, u.stride(0), u.stride(1), *_weight_strides(weight, g),
            y.stride(0), y.stride(1))
    launch(_FORWARD, grid, args, dict(CENTRES=g, **dot_options(weight.dtype)), blocks)
    return y


def input_grad(u: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, centres: torch.Tensor,
               inv_h: torch.Tensor, blocks: dict | None = None) -> torch.Tensor:
    """dL/du (N, in) in u's dtype from dL/dy (N, out) in the weight's dtype; fp32 accumulation."""
    n, n_in = u.shape
    n_out, g = weight.size(0), centres.numel()
    c, ih = _tables(u, centres, inv_h)
    du = torch.empty(n, n_in, dtype=u.dtype, device=u.device)
    if n == 0:
        return du
    u = u.contiguous()
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(n_in, meta["BLOCK_I"]))  # noqa: E731
    args = (u, grad_out, weight, c, ih, du, n, n_in, n_out, u.stride(0), u.stride(1), grad_out.stride(0),
            grad_out.stride(1), *_weight_strides(weight, g))
    launch(_INPUT_GRAD, grid, args, dict(CENTRES=g, **dot_options(weight.dtype)), blocks)
    return du


def weight_grad(u: torch.Tensor, grad_out: torch.Tensor, centres: torch.Tensor, inv_h: torch.Tensor,
                splits: int | None = None, blocks: dict | None = None) -> torch.Tensor:
    """dL/dW (out, in * G) in the compute dtype (fp32; fp64 for fp64 u) = B(u)^T dy, the basis rounded to dy's
    dtype; `splits` row ranges (default: enough to fill the GPU) summed by one torch reduction."""
    n, n_in = u.shape
    n_out, g = grad_out.size(1), centres.numel()
    c, ih = _tables(u, centres, inv_h)
    parts = row_splits(u.device, g * triton.cdiv(n_in, 64) * triton.cdiv(n_out, 64), n, splits) if n else 1
    per = triton.cdiv(max(n, 1), parts)
    dw = (torch.empty if n else torch.zeros)(parts, g, n_in, n_out, dtype=c.dtype, device=u.device)
    if n:
        def grid(meta):
            return g * triton.cdiv(n_in, meta["BLOCK_I"]), triton.cdiv(n_out, meta["BLOCK_O"]), parts
        args = (u, grad_out, c, ih, dw, n, n_in, n_out, per, u.stride(0), u.stride(1), grad_out.stride(0),
                grad_out.stride(1))
        launch(_WEIGHT_GRAD, grid, args, dict(CENTRES=g, **dot_options(grad_out.dtype)), blocks)
    dw = dw[0] if parts == 1 else dw.sum(0)  # (G, in, out)
    return dw.permute(2, 1, 0).reshape(n_out, n_in * g)
