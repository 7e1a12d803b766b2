"""Fast RSWAF KAN kernel: LayerNorm output -> basis -> linear in one autograd Function.

    y = b(u) W^T,  u = LayerNorm(x) (LayerNorm stays a normal op)

Only u (N, in) is saved; the (N, in * G) basis is rebuilt in backward from the same values the input
gradient needs. Kernels as for the B-spline layer (bspline_fast.py): traced dense ops inside
`torch.compile(model)` / export / meta, compiled dense kernels into scratch buffers when the layer compiles,
eager kernels otherwise. Mixed precision: basis and matmul in the autocast dtype, the tanh arithmetic and
the input-gradient sum in float32. Centres and width are constants here: with train_grid /
train_denominator the layer uses the plain autograd path. On CUDA with Triton, `compile=None` (auto) or
"triton" runs the fused kernels of rswaf/triton.py (basis in the matmul tiles, forward and both gradients), with
one warning and the paths above if they fail (the switch and the fallback are the B-spline layer's:
kinds.dispatch.triton_kernels).
"""
from __future__ import annotations

import torch

from kanvision.kinds.autocast import autocast_dtype, no_autocast
from kanvision.kinds.dispatch import triton_failed, triton_kernels
from kanvision.kinds.compile import run_compiled, use_compiled
from kanvision.kinds.rswaf.basis import dense_basis, dense_basis_backward, rswaf_basis
from kanvision.kinds.workspace import scratch

__all__ = ["RSWAFKANFunction", "basis", "backward", "rswaf_kan"]


def _eager_tanh(u, centres, inv_h, dtype):
    # tanh in place in a scratch buffer; float32 (or float64) arithmetic whatever the feature dtype.
    buf = scratch((*u.shape, centres.numel()), dtype, u.device, slot=1)
    torch.sub((u.to(dtype) * inv_h).unsqueeze(-1), centres.to(dtype) * inv_h, out=buf)
    return buf.tanh_()


def _one_minus_square_(t: torch.Tensor) -> torch.Tensor:
    # tanh_backward(g, t) = g * (1 - t^2): one pass, in place, where mul_/neg_/add_ would take three.
    return torch.ops.aten.tanh_backward.grad_input(torch.ones((), dtype=t.dtype, device=t.device).expand_as(t), t,
                                                   grad_input=t)


def _math_dtype(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def basis(u, centres, inv_h, compile: bool | None, out_dtype: torch.dtype | None = None, traced: bool = False):
    """The (N, in, G) basis in out_dtype; outside a trace it lives in scratch slot 0 (valid until the next call)."""
    out_dtype = out_dtype or u.dtype
    if traced or u.device.type == "meta":
        return dense_basis(u, centres, inv_h, out_dtype)
    shape = (*u.shape, centres.numel())
    if use_compiled(compile, u.device):
        u = u.detach()  # no autograd inside; u.requires_grad differs between passes and would recompile
        out = scratch(shape, out_dtype, u.device)
        variant = ("basis", u.size(1), u.dtype, out_dtype, u.device.type, torch.is_inference_mode_enabled())
        b = run_compiled(dense_basis, variant, (u, centres, inv_h, out_dtype), {"out": out}, ((u, (0,)), (out, (0,))))
        if b is not None:
            return b
    b = _one_minus_square_(_eager_tanh(u, centres, inv_h, _math_dtype(u)))
    return b if b.dtype == out_dtype else scratch(shape, out_dtype, u.device).copy_(b)


def backward(u, gbuf, centres, inv_h, compile: bool | None, traced: bool = False):
    """(basis in gbuf's dtype, grad_u) from gbuf, the basis gradient (N, in, G), which is overwritten."""
    if traced or u.device.type == "meta":
        return dense_basis_backward(u, gbuf, centres, inv_h)
    if use_compiled(compile, u.device):
        u = u.detach()
        out = scratch(gbuf.shape, gbuf.dtype, gbuf.device, slot=1)
        variant = ("basis_backward", u.size(1), u.dtype, gbuf.dtype, u.device.type)
        r = run_compiled(dense_basis_backward, variant, (u, gbuf, centres, inv_h), {"out": out},
                         ((u, (0,)), (gbuf, (0,)), (out, (0,))))
        if r is not None:
            return r
    dtype = _math_dtype(u)
    t = _eager_tanh(u, centres, inv_h, dtype)
    g = gbuf if gbuf.dtype == dtype else gbuf.to(dtype)
    torch.ops.aten.tanh_backward.grad_input(g, t, grad_input=g)  # g * (1 - t^2)
    grad_u = g.mul_(t).sum(-1).mul_(-2 * inv_h.to(dtype))
    b = _one_minus_square_(t)
    return (b if b.dtype == gbuf.dtype else gbuf.copy_(b)), grad_u.to(u.dtype)


_KIND = "RSWAFKAN"


class RSWAFKANFunction(torch.autograd.Function):
    """(u (N, in), weight (out, in * G), centres (G,), h (0-dim), compile, cdtype) -> (N, out) in cdtype.

    Saves u and the weight. create_graph=True backwards (Hessian-vector products) go through the plain
    formula, so second derivatives are exact as well."""

    @staticmethod
    def forward(ctx, u, weight, centres, h, compile, cdtype):
        traced = torch.compiler.is_compiling()
        with no_autocast(u.device.type):  # every cast below is explicit
            ctx.save_for_backward(u, weight, centres, h)
            ctx.cfg = (compile, cdtype)
            ctx.kernels = triton_kernels(_KIND, "kanvision.kinds.rswaf.triton", u, cdtype, compile, None)
            if ctx.kernels is not None:
                try:
                    return ctx.kernels.forward(u.detach(), weight.to(cdtype), centres, 1.0 / h, cdtype)
                except Exception as e:  # noqa: BLE001 - a Triton compile / launch error: today's kernels from now on
                    triton_failed(_KIND, e)
                    ctx.kernels = None
            b = basis(u, centres, 1.0 / h, compile, cdtype, traced)
            return torch.mm(b.view(u.size(0), -1), weight.to(cdtype).t())

    @staticmethod
    def backward(ctx, grad_out):
        u, weight, centres, h = ctx.saved_tensors
        compile, cdtype = ctx.cfg
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():
            b = rswaf_basis(u.to(centres.dtype), centres, h).reshape(u.size(0), -1)
            out = torch.mm(b.to(cdtype), weight.to(cdtype).t())
            wanted = [t for t, n in zip((u, weight), need[:2]) if n]
            grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
            return (next(grads) if need[0] else None), (next(grads) if need[1] else None), None, None, None, None
        if ctx.kernels is not None:
            try:
                with no_autocast(u.device.type):
                    g, inv_h = grad_out.to(cdtype).contiguous(), 1.0 / h
                    gu = ctx.kernels.input_grad(u.detach(), g, weight.to(cdtype), centres, inv_h) if need[0] else None
                    gw = ctx.kernels.weight_grad(u.detach(), g, centres, inv_h).to(weight.dtype) if need[1] else None
                return gu, gw, None, None, None, None
            except Exception as e:  # noqa: BLE001 - as in forward: today's kernels below
                triton_failed(_KIND, e)
        traced = torch.compiler.is_compiling()
        with no_autocast(u.device.type):
            grad_out = grad_out.to(cdtype).contiguous()
            n = u.size(0)
            w = weight.to(cdtype)
            if traced:
                gbuf = torch.mm(grad_out, w).view(n, u.size(1), centres.numel())
            else:
                gbuf = scratch((n, u.size(1), centres.numel()), cdtype, u.device)
                torch.mm(grad_out, w, out=gbuf.view(n, -1))
            b, gu = backward(u, gbuf, centres, 1.0 / h, compile, traced)
            gw = torch.mm(grad_out.t(), b.view(n, -1)).to(weight.dtype) if need[1] else None
        return (gu if need[0] else None), gw, None, None, None, None


def rswaf_kan(u, weight, centres, h, compile: bool | None) -> torch.Tensor:
    """The layer's function on u (N, in) -> (N, out), in the autocast dtype when autocast is on."""
    return RSWAFKANFunction.apply(u, weight, centres, h, compile, autocast_dtype(u))
