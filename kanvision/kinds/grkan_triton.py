"""Triton kernels of the group rational (CUDA; tested on the CPU under TRITON_INTERPRET=1).

The function is the one Adamdad/rational_kat_cu's kernels compute (kat_rational/rational_triton.py, the kernels
behind the current `KAT_Group`), written here from its formula, see `grkan_kernels`:

    F(x) = (a0 + a1 x + ... + a5 x^5) / (1 + |b0||x| + |b1||x|^2 + |b2||x|^3 + |b3||x|^4)

on an (N, C) channels-last tensor whose C channels form `groups` contiguous groups of C / groups channels.

Tiling: one program per (BLOCK_N rows) x (BLOCK_C channels of one group), so a program's ten coefficients are
scalars loaded once. The coefficient gradients are sums over every element of a group; the published kernels
add each element's ten terms into global memory with atomics (10 atomics per element). Here each program reduces
its tile in registers and writes ten partial sums to its own slot of an (row blocks, channel blocks, 10) buffer,
which one torch sum reduces afterwards: no atomics, and the same result on every run.

Arithmetic in float32 whatever the storage dtype (bf16/fp16 inputs are read and written in their own dtype);
float64 inputs do not come here (grkan_kernels sends them to the plain-torch kernels).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["forward", "backward", "tiles"]

FORWARD_TILE, BACKWARD_TILE = 4096, 2048  # elements per program
MAX_BLOCK_C = 128


def tiles(group_size: int, elements: int) -> tuple[int, int, int]:
    """(BLOCK_C, channel blocks per group, BLOCK_N) for groups of `group_size` channels.

    BLOCK_C is the largest power of two dividing the group size when that is at least 16 (no masked lanes:
    96 -> 32, 48 -> 16), else the next power of two above it, masked (24 -> 32, 3 -> 4)."""
    pow2 = group_size & -group_size
    block_c = pow2 if pow2 >= 16 else triton.next_power_of_2(group_size)
    block_c = min(block_c, MAX_BLOCK_C)
    return block_c, triton.cdiv(group_size, block_c), max(1, elements // block_c)


@triton.jit
def _tile(pid_n, pid_c, n_rows, n_cols, group_size, blocks_per_group, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    g = pid_c // blocks_per_group
    within = (pid_c % blocks_per_group) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (within[None, :] < group_size)
    offsets = rows[:, None].to(tl.int64) * n_cols + (g * group_size + within)[None, :]
    return g, offsets, mask


@triton.jit
def _rational_forward_kernel(x_ptr, y_ptr, a_ptr, b_ptr, n_rows, n_cols, group_size, blocks_per_group,
                             a_stride, b_stride, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    g, offsets, mask = _tile(tl.program_id(0), tl.program_id(1), n_rows, n_cols, group_size, blocks_per_group,
                             BLOCK_N, BLOCK_C)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    a = a_ptr + g * a_stride
    b = b_ptr + g * b_stride
    ax = tl.abs(x)
    p = tl.load(a + 5).to(tl.float32) * x + tl.load(a + 4).to(tl.float32)
    p = p * x + tl.load(a + 3).to(tl.float32)
    p = p * x + tl.load(a + 2).to(tl.float32)
    p = p * x + tl.load(a + 1).to(tl.float32)
    p = p * x + tl.load(a).to(tl.float32)
    q = tl.abs(tl.load(b + 3).to(tl.float32)) * ax + tl.abs(tl.load(b + 2).to(tl.float32))
    q = q * ax + tl.abs(tl.load(b + 1).to(tl.float32))
    q = q * ax + tl.abs(tl.load(b).to(tl.float32))
    q = q * ax + 1.0
    tl.store(y_ptr + offsets, (p / q).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rational_backward_kernel(g_ptr, x_ptr, gx_ptr, a_ptr, b_ptr, part_ptr, n_rows, n_cols, group_size,
                              blocks_per_group, a_stride, b_stride, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    g, offsets, mask = _tile(pid_n, pid_c, n_rows, n_cols, group_size, blocks_per_group, BLOCK_N, BLOCK_C)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    grad = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)  # masked lanes add 0 to every sum
    a = a_ptr + g * a_stride
    b = b_ptr + g * b_stride
    a1 = tl.load(a + 1).to(tl.float32)
    a2 = tl.load(a + 2).to(tl.float32)
    a3 = tl.load(a + 3).to(tl.float32)
    a4 = tl.load(a + 4).to(tl.float32)
    a5 = tl.load(a + 5).to(tl.float32)
    b0 = tl.abs(tl.load(b).to(tl.float32))
    b1 = tl.abs(tl.load(b + 1).to(tl.float32))
    b2 = tl.abs(tl.load(b + 2).to(tl.float32))
    b3 = tl.abs(tl.load(b + 3).to(tl.float32))
    ax = tl.abs(x)
    p = (((a5 * x + a4) * x + a3) * x + a2) * x + a1
    p = p * x + tl.load(a).to(tl.float32)
    q = (((b3 * ax + b2) * ax + b1) * ax + b0) * ax + 1.0
    dp = (((5.0 * a5 * x + 4.0 * a4) * x + 3.0 * a3) * x + 2.0 * a2) * x + a1  # P'(x)
    dq = ((4.0 * b3 * ax + 3.0 * b2) * ax + 2.0 * b1) * ax + b0  # Q'(x) / sign(x)
    dq = tl.where(x < 0, -dq, dq)  # sign(0) = +1, as the published kernels take it
    t = grad / q
    y = p / q
    tl.store(gx_ptr + offsets, (t * (dp - y * dq)).to(gx_ptr.dtype.element_ty), mask=mask)
    # dF/da_k = x^k / Q;  dF/d|b_k| = -(P / Q^2) |x|^(k+1)  (the sign of b_k is applied on the host)
    part = part_ptr + (pid_n * tl.num_programs(1) + pid_c) * 10
    u = t
    tl.store(part, tl.sum(tl.sum(u, axis=1), axis=0))
    u = u * x
    tl.store(part + 1, tl.sum(tl.sum(u, axis=1), axis=0))
    u = u * x
    tl.store(part + 2, tl.sum(tl.sum(u, axis=1), axis=0))
    u = u * x
    tl.store(part + 3, tl.sum(tl.sum(u, axis=1), axis=0))
    u = u * x
    tl.store(part + 4, tl.sum(tl.sum(u, axis=1), axis=0))
    u = u * x
    tl.store(part + 5, tl.sum(tl.sum(u, axis=1), axis=0))
    v = -(t * y) * ax
    tl.store(part + 6, tl.sum(tl.sum(v, axis=1), axis=0))
    v = v * ax
    tl.store(part + 7, tl.sum(tl.sum(v, axis=1), axis=0))
    v = v * ax
    tl.store(part + 8, tl.sum(tl.sum(v, axis=1), axis=0))
    v = v * ax
    tl.store(part + 9, tl.sum(tl.sum(v, axis=1), axis=0))


def _launch_args(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, groups: int, elements: int):
    n, c = x.shape
    group_size = c // groups
    block_c, per_group, block_n = tiles(group_size, elements)
    grid = (triton.cdiv(n, block_n), groups * per_group)
    # A coefficient table of one row (the shared numerator, or the paper-text option's shared denominator)
    # is read by every group: stride 0.
    strides = (6 if a.shape[0] == groups else 0, 4 if b.shape[0] == groups else 0)
    return grid, (n, c, group_size, per_group, *strides), dict(BLOCK_N=block_n, BLOCK_C=block_c)


def forward(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """F(x) for a contiguous (N, C) x, in x's dtype; a (1 or groups, 6), b (1 or groups, 4)."""
    x, a, b = x.contiguous(), a.contiguous(), b.contiguous()
    y = torch.empty_like(x)
    grid, sizes, blocks = _launch_args(x, a, b, groups, FORWARD_TILE)
    _rational_forward_kernel[grid](x, y, a, b, *sizes, **blocks)
    return y


def backward(grad: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, groups: int):
    """(dL/dx in x's dtype, dL/da in a's dtype and shape, dL/db in b's) for dL/dF = grad."""
    grad, x, a, b = grad.contiguous(), x.contiguous(), a.contiguous(), b.contiguous()
    gx = torch.empty_like(x)
    grid, sizes, blocks = _launch_args(x, a, b, groups, BACKWARD_TILE)
    part = torch.empty((*grid, 10), device=x.device, dtype=torch.float32)
    _rational_backward_kernel[grid](grad, x, gx, a, b, part, *sizes, **blocks)
    sums = part.sum(0).view(groups, grid[1] // groups, 10).sum(1)  # (groups, 10)
    ga, gb = sums[:, :6], sums[:, 6:]
    if a.shape[0] == 1:
        ga = ga.sum(0, keepdim=True)
    if b.shape[0] == 1:
        gb = gb.sum(0, keepdim=True)
    gb = gb * torch.where(b < 0, -1.0, 1.0)  # d|b|/db = sign(b), +1 at b = 0 as in the published kernels
    return gx, ga.to(a.dtype), gb.to(b.dtype)
