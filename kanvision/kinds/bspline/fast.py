"""Fast B-spline KAN: both branches through one matrix product, no dense basis kept for backward.

    y = [act(x), B(x)] @ [W_b ; s * c]^T   on a (N, 1 + G + k, in) (or (N, in, 1 + G + k)) feature tensor

that lives only for that product: backward saves x and the weights and rebuilds it. Which kernel builds it:
- inside `torch.compile(model)`, `torch.export` or on the meta device: the dense kernels (bspline_dense.py)
  as plain tensor ops, traced into the caller's graph (no scratch buffers, no host syncs);
- otherwise, with compiled kernels (the layer's `compile`, on by default where it works): the dense kernels
  compiled per variant (compile.py), writing into a reused scratch buffer (workspace.py);
- otherwise the eager local kernels (bspline_local.py).
On CUDA with Triton, uniform knots and an activation with a closed-form derivative, `compile=None` (auto) or
`compile="triton"` runs the fused Triton kernels instead (bspline/triton.py: the features never leave the matmul
tiles, in forward and both gradients); if they fail, one warning and the paths above from then on. Inside
`torch.compile(model)` the traced dense kernels still run (the Triton kernels are not registered as torch ops).

Mixed precision: under autocast the features and the matmul run in the autocast dtype (half the memory
traffic, tensor cores), while knots, the interval search, the polynomial arithmetic and the input-gradient
accumulation stay float32 (`bspline_dense.compute_dtype`). Gradients come back in each input's dtype.
Autocast is resolved once in forward and both passes cast explicitly, so backward does not depend on the
autocast state of whatever thread runs it.
"""
from __future__ import annotations


import torch
from torch import nn

from kanvision.kinds.bspline.basis import b_spline_basis
from kanvision.kinds.bspline.dense import activation_value, dense_features, dense_input_grad
from kanvision.kinds.bspline.local import SplineSpec, features_eager, input_grad_eager
from kanvision.kinds.autocast import autocast_dtype, no_autocast  # noqa: F401  (re-exported for old imports)
from kanvision.kinds.compile import run_compiled, use_compiled
from kanvision.kinds.dispatch import (KERNELS, kernel_switch, triton_failed,  # noqa: F401  (re-exported)
                                      triton_has_failed, triton_kernels)
from kanvision.kinds.workspace import scratch

__all__ = ["BSplineKANFunction", "KERNELS", "autocast_dtype", "bspline_kan", "features", "input_grad", "kernel_switch",
           "no_autocast", "triton_failed", "triton_kernels"]



def _traced() -> bool:
    return torch.compiler.is_compiling()


def _triton(x, cdtype, compile, uniform: bool, act: str):
    why = None if uniform else "non-uniform knots (after update_grid)"
    why = why or ("an activation module without a closed-form derivative in the kernels" if act == "module" else None)
    return triton_kernels("BSplineKAN", "kanvision.kinds.bspline.triton", x, cdtype, compile, why)


def _dynamic(x, feats, uniform: bool):
    # Batch always symbolic (last batch, validation); the general-knot kernel also ran as fast with a symbolic
    # width, so one graph serves every layer width, while uniform kernels are generated per width.
    return ((x, (0,)), (feats, (0,))) if uniform else ((x, (0, 1)), (feats, (0, 2)))


def _width(x, uniform: bool):
    return x.size(1) if uniform else "any"


def features(x, ta, tb, order: int, uniform: bool, act: str, compile: bool | None, spec, module: nn.Module | None,
             out_dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """([act(x), B(x)] in out_dtype, slot_major): (N, 1 + G + k, in) from the dense kernels (slot_major True),
    (N, in, 1 + G + k) from the eager ones. Outside a trace it lives in the scratch buffer (valid until the
    next kernel call): consume it before returning, never save it."""
    if _traced() or x.device.type == "meta" or spec is None:
        return dense_features(x, ta, tb, order, uniform, act, out_dtype), True
    if act != "module" and use_compiled(compile, x.device):
        x = x.detach()  # kernels need no autograd; x.requires_grad differs between passes and would recompile
        out = scratch((x.size(0), ta.size(-2), x.size(1)), out_dtype, x.device)
        variant = ("features", _width(x, uniform), order, uniform, act, x.dtype, out_dtype, x.device.type,
                   torch.is_inference_mode_enabled())
        y = run_compiled(dense_features, variant, (x, ta, tb, order, uniform, act, out_dtype), {"out": out},
                         _dynamic(x, out, uniform))
        if y is not None:
            return y, True
    return features_eager(x, spec, module, act, out_dtype), False


def input_grad(x, gfeat, slot_major: bool, ta, tb, order: int, uniform: bool, act: str, compile: bool | None,
               spec, module: nn.Module | None) -> torch.Tensor:
    """dL/dx from the feature gradient gfeat (in the layout `features` gave), which may be overwritten."""
    if slot_major and (_traced() or x.device.type == "meta" or spec is None):
        return dense_input_grad(x, gfeat, ta, tb, order, uniform, act)
    if slot_major:
        x = x.detach()
        variant = ("input_grad", _width(x, uniform), order, uniform, act, x.dtype, gfeat.dtype, x.device.type)
        gx = run_compiled(dense_input_grad, variant, (x, gfeat, ta, tb, order, uniform, act), None,
                          _dynamic(x, gfeat, uniform))
        if gx is not None:
            return gx
        gfeat = gfeat.transpose(1, 2).contiguous()  # this variant failed to compile: the eager kernel's layout
    return input_grad_eager(x, gfeat, spec, module, act)


def _combined_weight(base_weight, spline_weight, spline_scaler, slot_major: bool) -> torch.Tensor:
    """(out, in * (1 + G + k)) matching the features' layout: per input [w_b, s * c_0, ..., s * c_{G+k-1}]
    (input-major), or per slot the row over all inputs (slot-major)."""
    scaled = spline_weight if spline_scaler is None else spline_weight * spline_scaler.unsqueeze(-1)
    w = torch.cat([base_weight.unsqueeze(-1), scaled], -1)  # (out, in, 1 + G + k)
    return (w.transpose(1, 2) if slot_major else w).reshape(base_weight.size(0), -1)


def _reference_out(x, base_weight, spline_weight, spline_scaler, grid, order, module, act, cdtype):
    """The same function through plain autograd ops (Cox-de Boor over all bases): differentiable twice."""
    xc = x.to(grid.dtype)
    base = module(xc) if act == "module" else activation_value(xc, act)
    feats = torch.cat([base.unsqueeze(-1), b_spline_basis(xc, grid, order)], -1)
    weight = _combined_weight(base_weight, spline_weight, spline_scaler, False)
    return torch.mm(feats.reshape(x.size(0), -1).to(cdtype), weight.to(cdtype).t())


def _weight_grads(gw, need, spline_weight, spline_scaler):
    """(base, spline, scaler) gradients from gw (out, in, 1 + G + k) = dL/d[w_b, s * c], each None unless needed."""
    if gw is None:
        return None, None, None
    gs = gw[..., 1:]
    gbw = gw[..., 0].contiguous() if need[1] else None
    gsw = (gs if spline_scaler is None else gs * spline_scaler.unsqueeze(-1)).contiguous() if need[2] else None
    gsc = (gs * spline_weight).sum(-1) if need[3] else None
    return gbw, gsw, gsc


class BSplineKANFunction(torch.autograd.Function):
    """(x (N, in), base_weight, spline_weight, spline_scaler or None, grid, ta, tb, order, uniform, act,
    compile, spec, module, cdtype) -> (N, out) in cdtype.

    Saves only x and the parameters (and, when traced, the knot tables). A backward with create_graph=True (Hessian-vector
    products) is answered through the reference graph, so higher derivatives are exact too (and as slow as
    the reference)."""

    @staticmethod
    def forward(ctx, x, base_weight, spline_weight, spline_scaler, grid, ta, tb, order, uniform, act, compile, spec,
                module, cdtype):
        with no_autocast(x.device.type):  # every cast below is explicit
            y, ctx.kernels = None, None if spec is None else _triton(x, cdtype, compile, uniform, act)
            if ctx.kernels is not None:
                try:
                    weight = _combined_weight(base_weight, spline_weight, spline_scaler, True).to(cdtype)
                    y = ctx.kernels.forward(x.detach(), weight, ta, tb, order, act, cdtype)
                except Exception as e:  # noqa: BLE001 - a Triton compile / launch error: today's kernels from now on
                    triton_failed("BSplineKAN", e)
                    ctx.kernels = None
            if y is None:
                feats, slot_major = features(x, ta, tb, order, uniform, act, compile, spec, module, cdtype)
                weight = _combined_weight(base_weight, spline_weight, spline_scaler, slot_major).to(cdtype)
                # reshape, not view: traced / meta features follow x's strides, and a (rows, in) view of a
                # channels-last tensor (ConvMixer on one image) is not contiguous; scratch / eager features are.
                y = torch.mm(feats.reshape(x.size(0), -1), weight.t())
            if spec is None:  # traced: the knot tables are graph values and must be saved like any other
                ctx.save_for_backward(x, base_weight, spline_weight, spline_scaler, grid, ta, tb)
            else:  # eager: the layer's cached spec holds them; only batch-sized x is saved beside the weights
                ctx.save_for_backward(x, base_weight, spline_weight, spline_scaler)
            ctx.cfg = (order, uniform, act, compile, spec, module, cdtype)
            return y

    @staticmethod
    def backward(ctx, grad_out):
        order, uniform, act, compile, spec, module, cdtype = ctx.cfg
        if spec is None:
            x, base_weight, spline_weight, spline_scaler, grid, ta, tb = ctx.saved_tensors
        else:
            (x, base_weight, spline_weight, spline_scaler), grid, (ta, tb) = ctx.saved_tensors, spec.grid, spec.dense
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():
            inputs = (x, base_weight, spline_weight, spline_scaler)
            out = _reference_out(x, base_weight, spline_weight, spline_scaler, grid, order, module, act, cdtype)
            grads = iter(torch.autograd.grad(out, [t for t, n in zip(inputs, need) if n], grad_out,
                                             create_graph=True))
            return (*[next(grads) if n else None for n in need[:4]], *[None] * 10)
        if ctx.kernels is not None and not triton_has_failed("BSplineKAN"):
            try:
                with no_autocast(x.device.type):
                    g, gx, gw = grad_out.to(cdtype).contiguous(), None, None
                    if need[0]:
                        weight = _combined_weight(base_weight, spline_weight, spline_scaler, True).to(cdtype)
                        gx = ctx.kernels.input_grad(x.detach(), g, weight, ta, tb, order, act)
                    if need[1] or need[2] or need[3]:
                        gw = ctx.kernels.weight_grad(x.detach(), g, ta, tb, order, act).to(base_weight.dtype)
                return gx, *_weight_grads(gw, need, spline_weight, spline_scaler), *[None] * 10
            except Exception as e:  # noqa: BLE001 - as in forward: today's kernels below
                triton_failed("BSplineKAN", e)
        with no_autocast(x.device.type):
            grad_out = grad_out.to(cdtype).contiguous()
            n, n_in = x.size(0), x.size(1)
            gx = gbw = gsw = gsc = None
            feats, slot_major = features(x, ta, tb, order, uniform, act, compile, spec, module, cdtype)
            if need[1] or need[2] or need[3]:
                gw = torch.mm(grad_out.t(), feats.reshape(n, -1)).to(base_weight.dtype)
                gw = gw.view(base_weight.size(0), -1, n_in).transpose(1, 2) if slot_major else \
                    gw.view(base_weight.size(0), n_in, -1)  # (out, in, 1 + G + k) either way
                gbw, gsw, gsc = _weight_grads(gw, need, spline_weight, spline_scaler)
            if need[0]:
                weight = _combined_weight(base_weight, spline_weight, spline_scaler, slot_major).to(cdtype)
                if _traced() or spec is None:
                    gfeat = torch.mm(grad_out, weight).view_as(feats)
                else:  # features are no longer needed: reuse their memory
                    gfeat = torch.mm(grad_out, weight, out=feats.view(n, -1)).view_as(feats)
                gx = input_grad(x, gfeat, slot_major, ta, tb, order, uniform, act, compile, spec, module)
        return gx, gbw, gsw, gsc, *[None] * 10


def bspline_kan(x, base_weight, spline_weight, spline_scaler, grid, ta, tb, order: int, uniform: bool, act: str,
                compile: bool | None, spec, module: nn.Module | None) -> torch.Tensor:
    """The layer's function on x (N, in) -> (N, out), in the autocast dtype when autocast is on."""
    cdtype = autocast_dtype(x)
    return BSplineKANFunction.apply(x, base_weight, spline_weight, spline_scaler, grid, ta, tb, order, uniform,
                                    act, compile, spec, module, cdtype)
