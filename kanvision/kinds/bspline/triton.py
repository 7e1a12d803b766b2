"""Fused Triton kernels of the B-spline KAN layer on uniform knots (CUDA; tested on the CPU under TRITON_INTERPRET=1).

The layer is one matrix product on a feature tensor that is never stored:

    y = F(x) W^T,   F(x)[n, s, i] = act(x[n, i]) (slot s = 0),  B_{s-1}(x[n, i]) (slots 1 .. G + k)

with W (out, (1 + G + k) in) slot-major, as `bspline.fast._combined_weight` builds it. Each kernel evaluates the
features of its tile in registers, right before the tensor-core product that consumes them:

- forward: a program owns an (BLOCK_M rows, BLOCK_O outputs) tile of y; for every block of BLOCK_I inputs and every
  slot s it computes F_s (BLOCK_M, BLOCK_I) and adds tl.dot(F_s, W_s^T tile) to an fp32 accumulator.
- input gradient: a program owns an (BLOCK_M, BLOCK_I) tile of dx. Per slot, G_s = dy W_s (the K-loop over the
  outputs, fp32 accumulator), then dx += G_s * dF_s/dx. dy tiles are read once per slot (from L2 after the first).
- weight gradient: a program owns the (BLOCK_I, BLOCK_O) tile of dW for one slot and loops over the rows,
  rebuilding F_s per row block: dW_s += F_s^T dy. No atomics: when rows are split over several programs (to fill
  the GPU when out x in is small) each writes its own partial tile and one torch sum adds them afterwards.

Basis on uniform knots (the local form of `bspline.basis`): basis m is the cardinal B-spline N_k(u) of
u = (x - g_m) / h, measured from its own first knot (as `bspline.dense` does, so u keeps its digits). N_k is
symmetric about c = (k + 1) / 2, so with s = |u - c| it is one of floor(k / 2) + 1 polynomials of the fraction
f = s + delta - r (delta = 1/2 for even k) on piece r = floor(s + delta): the rows of
`uniform_local_coefficients` for the intervals right of the centre; zero for s >= c (outside the support, which
also gives zero outside the grid, like Cox-de Boor's half-open intervals, and for NaN inputs). d/du is
sign(u - c) times the polynomial's derivative (the right derivative at the centre, as the half-open intervals).

Precision: basis and activation in float32 (float64 for float64 inputs, which only the interpreter tests run),
features rounded to the weight's dtype (the autocast dtype: bf16/fp16) for tl.dot, accumulation in fp32. With
fp32 features tl.dot runs IEEE fp32 unless torch allows TF32 for matmuls, as torch.mm would.

Not tuned on a GPU yet: on CUDA the block sizes come from `triton.autotune` over a few configurations
(first call per (in, out) shape); the interpreter runs fixed blocks. Non-uniform knots (after update_grid) and
activations without a closed-form derivative stay on the compiled / eager kernels (bspline.fast).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kanvision.kinds.bspline.basis import _coefficients_exact
# The launch helpers and tile tables are the kinds' shared ones (rswaf/triton.py uses them too). INTERPRETED is
# imported by name, so bspline.triton.INTERPRETED (read by kinds/dispatch.py) stays where it was.
from kanvision.kinds.triton_common import INTERPRETED, autotuned_kernels, dot, dot_options, launch, row_splits

__all__ = ["ACTIVATIONS", "INTERPRETED", "forward", "input_grad", "weight_grad", "piece_table"]

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "tanh", "identity")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _tanh(z):
    # tanh from one exp of -2|z| (<= 1: no overflow), exact to a few ulps everywhere, also under the interpreter.
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z < 0, -t, t)


@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == "silu":
        y = x * tl.sigmoid(x)
    elif ACT == "gelu":
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == "gelu_tanh":
        y = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    elif ACT == "relu":
        y = tl.where(x > 0, x, 0.0)
    elif ACT == "tanh":
        y = _tanh(x)
    else:
        y = x
    return y


@triton.jit
def _act_grad(x, ACT: tl.constexpr):
    if ACT == "silu":
        s = tl.sigmoid(x)
        d = s * (1.0 + x * (1.0 - s))
    elif ACT == "gelu":
        d = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476)) + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
    elif ACT == "gelu_tanh":
        t = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
        d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * x * x)
    elif ACT == "relu":
        d = tl.where(x > 0, 1.0, 0.0)
    elif ACT == "tanh":
        t = _tanh(x)
        d = 1.0 - t * t
    else:
        d = tl.zeros_like(x) + 1.0
    return d


@triton.jit
def _cardinal(u, p_ptr, ORDER: tl.constexpr, DERIV: tl.constexpr):
    """N_k(u) (or dN_k/du) elementwise; p_ptr: the (floor(k/2) + 1, k + 1) piece table (`piece_table`)."""
    CENTER: tl.constexpr = (ORDER + 1) * 0.5
    DELTA: tl.constexpr = (ORDER % 2 == 0) * 0.5
    PIECES: tl.constexpr = ORDER // 2 + 1
    s = tl.abs(u - CENTER) + DELTA
    piece = tl.floor(s)
    f = s - piece
    out = tl.zeros_like(u)  # NaN / inf inputs match no piece: zero, as Cox-de Boor gives
    for r in tl.static_range(PIECES):
        if DERIV:
            v = tl.load(p_ptr + r * (ORDER + 1) + ORDER) * ORDER
            for p in tl.static_range(ORDER - 1, 0, -1):
                v = v * f + tl.load(p_ptr + r * (ORDER + 1) + p) * p
        else:
            v = tl.load(p_ptr + r * (ORDER + 1) + ORDER) + f * 0.0
            for p in tl.static_range(ORDER - 1, -1, -1):
                v = v * f + tl.load(p_ptr + r * (ORDER + 1) + p)
        out = tl.where(piece == r, v, out)
    if DERIV:
        out = tl.where(u < CENTER, -out, out)
    return out


@triton.jit
def _spline(x, slot, lo_ptr, inv_h, cols, n_in, p_ptr, ORDER: tl.constexpr, DERIV: tl.constexpr):
    """Basis slot - 1 of the (rows, BLOCK_I) tile x (or its d/dx), on knots lo: row `slot` of the dense table,
    that basis's first knot."""
    lo = tl.load(lo_ptr + slot * n_in + cols, mask=cols < n_in, other=0.0)
    v = _cardinal((x - lo[None, :]) * inv_h[None, :], p_ptr, ORDER, DERIV)
    if DERIV:
        v = v * inv_h[None, :]
    return v


@triton.jit
def _feature(x, slot, lo_ptr, inv_h, cols, n_in, p_ptr, ORDER: tl.constexpr, ACT: tl.constexpr):
    """Feature slot `slot` (a runtime value) of the tile x: act(x) for slot 0, else `_spline`."""
    if slot == 0:
        v = _act(x, ACT)
    else:
        v = _spline(x, slot, lo_ptr, inv_h, cols, n_in, p_ptr, ORDER, False)
    return v


@triton.jit
def _forward_kernel(x_ptr, w_ptr, lo_ptr, ih_ptr, p_ptr, y_ptr, n_rows, n_in, n_out,
                    sxn, sxi, swo, sws, swi, syn, syo,
                    ORDER: tl.constexpr, SLOTS: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
                    DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    acc = tl.zeros((BLOCK_M, BLOCK_O), dtype=ih_ptr.dtype.element_ty)
    for i0 in range(0, n_in, BLOCK_I):
        cols = i0 + tl.arange(0, BLOCK_I)
        xm = (rows[:, None] < n_rows) & (cols[None, :] < n_in)
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * sxn + cols[None, :] * sxi, mask=xm, other=0.0)
        x = x.to(ih_ptr.dtype.element_ty)
        inv_h = tl.load(ih_ptr + cols, mask=cols < n_in, other=0.0)
        wm = (cols[:, None] < n_in) & (outs[None, :] < n_out)
        wp = w_ptr + outs[None, :] * swo + cols[:, None] * swi
        acc = dot(_act(x, ACT).to(w_ptr.dtype.element_ty), tl.load(wp, mask=wm, other=0.0), acc, PREC, DOT_F32)
        # Runtime loops over the slots here and in the input gradient: unrolled, the compiler hoisted or sank
        # every slot's elementwise work next to the others and spilled registers (checked with cuobjdump, sm_90).
        for s in range(1, SLOTS):
            f = _spline(x, s, lo_ptr, inv_h, cols, n_in, p_ptr, ORDER, False)
            acc = dot(f.to(w_ptr.dtype.element_ty), tl.load(wp + s * sws, mask=wm, other=0.0), acc, PREC, DOT_F32)
    ym = (rows[:, None] < n_rows) & (outs[None, :] < n_out)
    tl.store(y_ptr + rows[:, None].to(tl.int64) * syn + outs[None, :] * syo, acc.to(y_ptr.dtype.element_ty), mask=ym)


@triton.jit
def _slot_grad(g_ptr, w_ptr, ih_ptr, s, rows, cols, n_rows, n_in, n_out, sgn, sgo, swo, sws, swi, BLOCK_M: tl.constexpr,
               BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr):
    """G_s = dy W_s for the (rows, cols) tile: the K-loop over the outputs, fp32 accumulator."""
    gs = tl.zeros((BLOCK_M, BLOCK_I), dtype=ih_ptr.dtype.element_ty)  # the compute dtype
    for o0 in range(0, n_out, BLOCK_O):
        outs = o0 + tl.arange(0, BLOCK_O)
        gm = (rows[:, None] < n_rows) & (outs[None, :] < n_out)
        g = tl.load(g_ptr + rows[:, None].to(tl.int64) * sgn + outs[None, :] * sgo, mask=gm, other=0.0)
        wm = (outs[:, None] < n_out) & (cols[None, :] < n_in)
        w = tl.load(w_ptr + outs[:, None] * swo + s * sws + cols[None, :] * swi, mask=wm, other=0.0)
        gs = dot(g, w, gs, PREC, DOT_F32)
    return gs


@triton.jit
def _input_grad_kernel(x_ptr, g_ptr, w_ptr, lo_ptr, ih_ptr, p_ptr, dx_ptr, n_rows, n_in, n_out,
                       sxn, sxi, sgn, sgo, swo, sws, swi,
                       ORDER: tl.constexpr, SLOTS: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
                       DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    xm = (rows[:, None] < n_rows) & (cols[None, :] < n_in)
    xoff = rows[:, None].to(tl.int64) * sxn + cols[None, :] * sxi
    x = tl.load(x_ptr + xoff, mask=xm, other=0.0).to(ih_ptr.dtype.element_ty)
    inv_h = tl.load(ih_ptr + cols, mask=cols < n_in, other=0.0)
    dx = _slot_grad(g_ptr, w_ptr, ih_ptr, 0, rows, cols, n_rows, n_in, n_out, sgn, sgo, swo, sws, swi, BLOCK_M, BLOCK_O,
                    BLOCK_I, PREC, DOT_F32) * _act_grad(x, ACT)
    # A runtime loop, so dx is loop-carried: unrolled, the compiler sank every slot's `dx += G_s * dF_s` to the
    # end and kept all G_s live (register spills of 2-5 KB per thread on sm_90, read with cuobjdump).
    for s in range(1, SLOTS):
        gs = _slot_grad(g_ptr, w_ptr, ih_ptr, s, rows, cols, n_rows, n_in, n_out, sgn, sgo, swo, sws, swi, BLOCK_M,
                        BLOCK_O, BLOCK_I, PREC, DOT_F32)
        dx += gs * _spline(x, s, lo_ptr, inv_h, cols, n_in, p_ptr, ORDER, True)
    tl.store(dx_ptr + xoff, dx.to(dx_ptr.dtype.element_ty), mask=xm)


@triton.jit
def _weight_grad_kernel(x_ptr, g_ptr, lo_ptr, ih_ptr, p_ptr, dw_ptr, n_rows, n_in, n_out, rows_per_split,
                        sxn, sxi, sgn, sgo,
                        ORDER: tl.constexpr, SLOTS: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
                        DOT_F32: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    # dw: (splits, SLOTS, in, out) contiguous partial sums; program axis 0 = slot x input block.
    blocks_i = tl.cdiv(n_in, BLOCK_I)
    slot = tl.program_id(0) // blocks_i
    cols = (tl.program_id(0) % blocks_i) * BLOCK_I + tl.arange(0, BLOCK_I)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    split = tl.program_id(2)
    start = split * rows_per_split
    end = tl.minimum(start + rows_per_split, n_rows)
    inv_h = tl.load(ih_ptr + cols, mask=cols < n_in, other=0.0)
    acc = tl.zeros((BLOCK_I, BLOCK_O), dtype=ih_ptr.dtype.element_ty)
    for n0 in range(start, end, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        xm = (rows[:, None] < end) & (cols[None, :] < n_in)
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * sxn + cols[None, :] * sxi, mask=xm, other=0.0)
        f = _feature(x.to(ih_ptr.dtype.element_ty), slot, lo_ptr, inv_h, cols, n_in, p_ptr, ORDER, ACT)
        gm = (rows[:, None] < end) & (outs[None, :] < n_out)  # rows outside [start, end) read dy = 0
        g = tl.load(g_ptr + rows[:, None].to(tl.int64) * sgn + outs[None, :] * sgo, mask=gm, other=0.0)
        acc = dot(tl.trans(f.to(g_ptr.dtype.element_ty)), g, acc, PREC, DOT_F32)
    base = (split.to(tl.int64) * SLOTS + slot) * n_in * n_out
    om = (cols[:, None] < n_in) & (outs[None, :] < n_out)
    tl.store(dw_ptr + base + cols[:, None] * n_out + outs[None, :], acc.to(dw_ptr.dtype.element_ty), mask=om)


_FORWARD, _INPUT_GRAD, _WEIGHT_GRAD = autotuned_kernels(_forward_kernel, _input_grad_kernel, _weight_grad_kernel)


@functools.lru_cache(maxsize=None)
def _piece_table(order: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    k = order
    rows = _coefficients_exact(k)
    # Piece r right of the centre lies on unit interval (k + 1) // 2 + r of N_k, i.e. local basis k // 2 - r.
    return torch.tensor([[float(c) for c in rows[k // 2 - r]] for r in range(k // 2 + 1)], dtype=dtype, device=device)


def piece_table(order: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(floor(k/2) + 1, k + 1): coefficients of f^p of N_k on each piece right of its centre (see module doc)."""
    return _piece_table(int(order), dtype, torch.device(device))


def _common(x, lo, order):
    return x.size(0), x.size(1), lo.size(0), piece_table(order, lo.dtype, x.device)


def forward(x: torch.Tensor, weight: torch.Tensor, lo: torch.Tensor, inv_h: torch.Tensor, order: int, act: str,
            out_dtype: torch.dtype | None = None, blocks: dict | None = None) -> torch.Tensor:
    """y (N, out) = F(x) W^T. x (N, in); weight (out, S in) slot-major in the matmul dtype; lo (S, in) each basis's
    first knot (row 0 unused) and inv_h (in,) in the compute dtype (`bspline.dense.dense_tables`)."""
    n, n_in, slots, pieces = _common(x, lo, order)
    n_out = weight.size(0)
    y = torch.empty(n, n_out, dtype=out_dtype or weight.dtype, device=x.device)
    if n == 0:
        return y
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(n_out, meta["BLOCK_O"]))  # noqa: E731
    args = (x, weight, lo, inv_h, pieces, y, n, n_in, n_out, x.stride(0), x.stride(1), weight.stride(0),
            n_in * weight.stride(1), weight.stride(1), y.stride(0), y.stride(1))
    launch(_FORWARD, grid, args, dict(ORDER=order, SLOTS=slots, ACT=act, **dot_options(weight.dtype)), blocks)
    return y


def input_grad(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, lo: torch.Tensor, inv_h: torch.Tensor,
               order: int, act: str, blocks: dict | None = None) -> torch.Tensor:
    """dL/dx (N, in) in x's dtype from dL/dy (N, out) (in the weight's dtype), accumulated in fp32."""
    n, n_in, slots, pieces = _common(x, lo, order)
    n_out = weight.size(0)
    dx = torch.empty(n, n_in, dtype=x.dtype, device=x.device)
    if n == 0:
        return dx
    x = x.contiguous()
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(n_in, meta["BLOCK_I"]))  # noqa: E731
    args = (x, grad_out, weight, lo, inv_h, pieces, dx, n, n_in, n_out, x.stride(0), x.stride(1), grad_out.stride(0),
            grad_out.stride(1), weight.stride(0), n_in * weight.stride(1), weight.stride(1))
    launch(_INPUT_GRAD, grid, args, dict(ORDER=order, SLOTS=slots, ACT=act, **dot_options(weight.dtype)), blocks)
    return dx


def weight_grad(x: torch.Tensor, grad_out: torch.Tensor, lo: torch.Tensor, inv_h: torch.Tensor, order: int, act: str,
                splits: int | None = None, blocks: dict | None = None) -> torch.Tensor:
    """dL/dW (out, in, S) in the compute dtype (fp32, fp64 for fp64 tables) = F(x)^T dy, features rounded to
    dy's dtype (the forward's matmul dtype). `splits` row ranges (default: enough to fill the GPU) are summed
    by one torch reduction."""
    n, n_in, slots, pieces = _common(x, lo, order)
    n_out = grad_out.size(1)
    programs = slots * triton.cdiv(n_in, 64) * triton.cdiv(n_out, 64)
    parts = row_splits(x.device, programs, n, splits) if n else 1
    per = triton.cdiv(max(n, 1), parts)
    # Every element is written by exactly one program (a range past the last row writes zeros).
    dw = (torch.empty if n else torch.zeros)(parts, slots, n_in, n_out, dtype=lo.dtype, device=x.device)
    if n:
        def grid(meta):
            return slots * triton.cdiv(n_in, meta["BLOCK_I"]), triton.cdiv(n_out, meta["BLOCK_O"]), parts
        args = (x, grad_out, lo, inv_h, pieces, dw, n, n_in, n_out, per, x.stride(0), x.stride(1), grad_out.stride(0),
                grad_out.stride(1))
        launch(_WEIGHT_GRAD, grid, args, dict(ORDER=order, SLOTS=slots, ACT=act, **dot_options(grad_out.dtype)),
               blocks)
    return (dw[0] if parts == 1 else dw.sum(0)).permute(2, 1, 0)
