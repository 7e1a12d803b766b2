"""The group rational of GR-KAN (KAT) as an autograd Function: elementwise forward, backward recomputed from x.

    F(x) = P(x) / Q(x),  P = a0 + a1 x + ... + a5 x^5,  Q = 1 + |b0||x| + |b1||x|^2 + |b2||x|^3 + |b3||x|^4

the function Adamdad/rational_kat_cu's CUDA kernel (src/rational_kernel_group.cu, rational_fwd_cuda_kernel_1dgroup)
and Triton kernel (kat_rational/rational_triton.py, rational_fwd_kernel) compute: absolute values of the
denominator coefficients, powers of |x| in Q. (Its pure-torch fallback, kat_1dgroup_torch.py, multiplies |b_k| by
the signed x^(k+1): a different function for x < 0, not followed.) Channel c of an (N, C) input belongs to group
c // (C / groups): contiguous groups. a is (1, 6) or (groups, 6), b is (groups, 4) or (1, 4); one row is shared
by every group.

Derivatives (from the formula; the published backward kernels use the same one-sided choices at 0):
    dF/dx   = (P'(x) - F Q'(x)) / Q,  Q'(x) = sign(x) (|b0| + 2|b1||x| + 3|b2||x|^2 + 4|b3||x|^3)
    dF/da_k = x^k / Q
    dF/db_k = -(F / Q) sign(b_k) |x|^(k+1)
with sign(0) = +1 for both x and b_k. At b_k = 0 (every denominator of the "identity" init) that is the
derivative from the right, not torch's sign(0) = 0: with the latter those coefficients would never move from 0,
while KAT's kernels let them train.

Memory: the Function saves x and the coefficients only (an activation's footprint) and recomputes P, Q in
backward. Arithmetic in float32 for half-precision inputs (float64 for float64), output and input gradient in
x's dtype, coefficient gradients in the coefficients' dtype. Kernels, in order of preference:
- inside torch.compile(model) / export / on meta: the plain-torch kernels below, traced into the caller's graph;
- CUDA: the Triton kernels of grkan_triton (a failure there warns once and falls through to the next);
- the plain-torch kernels compiled per variant (kanvision.kinds.compile) where the `compile` switch allows;
- the same kernels eager.
create_graph=True backwards (Hessian-vector products) differentiate `rational_reference` with autograd.
"""
from __future__ import annotations

import warnings
from importlib.util import find_spec

import torch

from kanvision.kinds.autocast import no_autocast
from kanvision.kinds.compile import run_compiled, use_compiled

__all__ = ["GroupRationalFunction", "group_rational", "rational_backward", "rational_forward", "rational_reference",
           "triton_failure"]

_TRITON_FAILURE: list[str] = []  # the cause, once the Triton kernels have failed in this process


def math_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _columns(w: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """Coefficient k of every row as a (rows, 1) tensor: broadcasts against (N, groups, group size)."""
    w = w.to(dtype)
    return [w[:, k:k + 1] for k in range(w.shape[1])]


def _p_q(xv, ax, a, b):
    p = a[5] * xv + a[4]
    for k in (3, 2, 1, 0):
        p = p * xv + a[k]
    q = b[3] * ax + b[2]
    for k in (1, 0):
        q = q * ax + b[k]
    return p, q * ax + 1


def _p_q_(xv, ax, a, b):
    """P and Q by Horner, updated in place on their own fresh tensors (the kernels run without autograd: a
    third of the full-size temporaries of _p_q, which is what eager CPU time is made of)."""
    p = xv * a[5]
    p += a[4]
    for k in (3, 2, 1, 0):
        p.mul_(xv).add_(a[k])
    q = ax * b[3]
    q += b[2]
    for k in (1, 0):
        q.mul_(ax).add_(b[k])
    return p, q.mul_(ax).add_(1)


def rational_forward(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, groups: int,
                     out_dtype: torch.dtype) -> torch.Tensor:
    """F(x) for a contiguous (N, C) x, in out_dtype (plain tensor ops: eager, compiled or traced)."""
    m = math_dtype(x, a, b)
    n, c = x.shape
    xv = x.view(n, groups, c // groups).to(m)
    p, q = _p_q_(xv, xv.abs(), _columns(a, m), _columns(b.abs(), m))
    return p.div_(q).to(out_dtype).view(n, c)


def _per_channel(w: torch.Tensor, groups: int, channels: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Coefficient k of every channel as a (C,) tensor (row g of w repeated over group g's channels)."""
    w = w.to(dtype).expand(groups, w.shape[1]).repeat_interleave(channels // groups, 0)
    return [w[:, k] for k in range(w.shape[1])]


def rational_backward(grad: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, groups: int):
    """(dL/dx, dL/da, dL/db) for dL/dF = grad, each in its input's dtype and shape (plain tensor ops).

    Coefficients are expanded per channel so that the ten coefficient sums are column sums of (N, C) tensors
    (reduced over the group's channels afterwards): 1.5x faster compiled on the CPU than sums over the
    (rows, in-group channel) dims of an (N, groups, C / groups) view, and far faster eager."""
    m = math_dtype(x, a, b)
    n, c = x.shape
    xv, gv = x.to(m), grad.reshape(n, c).to(m)
    ac, bc = _per_channel(a, groups, c, m), _per_channel(b.abs(), groups, c, m)
    ax = xv.abs()
    p, q = _p_q_(xv, ax, ac, bc)
    dp = xv * (5 * ac[5])  # P'(x)
    dp += 4 * ac[4]
    for k in (3, 2, 1):
        dp.mul_(xv).add_(k * ac[k])
    dq = ax * (4 * bc[3])  # Q'(x) / sign(x)
    dq += 3 * bc[2]
    dq.mul_(ax).add_(2 * bc[1]).mul_(ax).add_(bc[0])
    dq.mul_(torch.where(xv < 0, -1.0, 1.0).to(m))  # sign(0) = +1
    t = gv / q
    y = p.div_(q)
    gx = dp.sub_(dq.mul_(y)).mul_(t)  # (P' - F Q') / Q times the incoming gradient
    sums = [t.sum(0)]
    u = t * xv
    sums.append(u.sum(0))
    for _ in range(4):
        sums.append(u.mul_(xv).sum(0))
    v = (t * ax).mul_(y).neg_()  # -F/Q |x|^(k+1) times the gradient, k = 0..3
    sums.append(v.sum(0))
    for _ in range(3):
        sums.append(v.mul_(ax).sum(0))
    sums = torch.stack(sums, -1).view(groups, c // groups, 10).sum(1)  # (groups, 10)
    ga, gb = sums[:, :6], sums[:, 6:]
    if a.shape[0] == 1:
        ga = ga.sum(0, keepdim=True)
    if b.shape[0] == 1:
        gb = gb.sum(0, keepdim=True)
    gb = gb * torch.where(b < 0, -1.0, 1.0).to(m)
    return gx.to(x.dtype), ga.to(a.dtype), gb.to(b.dtype)


def rational_reference(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """F(x) through differentiable ops, with the kernels' derivatives at x = 0 and b_k = 0: |v| is written as
    v * s with s = (-1 if v < 0 else 1) a constant, so d|v|/dv = s. Any (..., C) x; used for double backward."""
    m = math_dtype(x, a, b)
    c = x.shape[-1]
    xv = x.reshape(-1, groups, c // groups).to(m)
    ax = xv * torch.where(xv < 0, -1.0, 1.0).to(m)
    b_abs = b.to(m) * torch.where(b < 0, -1.0, 1.0).to(m)
    p, q = _p_q(xv, ax, _columns(a, m), _columns(b_abs, m))
    return (p / q).to(x.dtype).reshape(x.shape)


def triton_failure() -> str | None:
    """Why the Triton kernels were given up in this process (None while they work or were never tried)."""
    return _TRITON_FAILURE[0] if _TRITON_FAILURE else None


def _use_triton(switch: bool | None, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> bool:
    if switch is False or x.device.type != "cuda" or _TRITON_FAILURE or x.numel() == 0:
        return False
    if math_dtype(x, a, b) == torch.float64:
        return False  # float64 stays float64: the plain kernels
    if find_spec("triton") is None:
        _give_up_triton("Triton is not installed", warn=bool(switch))
        return False
    return True


def _give_up_triton(cause: str, warn: bool = True) -> None:
    _TRITON_FAILURE.append(cause)
    if warn:
        warnings.warn(f"kanvision: the GR-KAN Triton kernels failed ({cause}); the group rational runs the "
                      "compiled/eager torch kernels from now on (same function, slower).", RuntimeWarning,
                      stacklevel=4)


def _variant(tag, x, a, b, groups):
    return (tag, groups, x.size(1), a.size(0), b.size(0), x.dtype, a.dtype, b.dtype, x.device.type,
            torch.is_inference_mode_enabled())


def _forward(x, a, b, groups, compile, triton):
    if torch.compiler.is_compiling() or x.device.type == "meta":
        return rational_forward(x, a, b, groups, x.dtype)
    if _use_triton(triton, x, a, b):
        try:
            from kanvision.kinds import grkan_triton
            return grkan_triton.forward(x, a, b, groups)
        except Exception as e:  # noqa: BLE001 - a Triton/driver error: the torch kernels compute the same
            _give_up_triton(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    if use_compiled(compile, x.device):
        x, a, b = x.detach(), a.detach(), b.detach()  # requires_grad differs between calls and would recompile
        y = run_compiled(rational_forward, _variant("forward", x, a, b, groups), (x, a, b, groups, x.dtype),
                         dynamic=((x, (0,)),))
        if y is not None:
            return y
    return rational_forward(x, a, b, groups, x.dtype)


def _backward(grad, x, a, b, groups, compile, triton):
    if torch.compiler.is_compiling() or x.device.type == "meta":
        return rational_backward(grad, x, a, b, groups)
    if _use_triton(triton, x, a, b):
        try:
            from kanvision.kinds import grkan_triton
            return grkan_triton.backward(grad, x, a, b, groups)
        except Exception as e:  # noqa: BLE001
            _give_up_triton(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    if use_compiled(compile, x.device):
        grad, x, a, b = grad.detach().contiguous(), x.detach(), a.detach(), b.detach()
        r = run_compiled(rational_backward, _variant("backward", x, a, b, groups), (grad, x, a, b, groups),
                         dynamic=((grad, (0,)), (x, (0,))))
        if r is not None:
            return r
    return rational_backward(grad, x, a, b, groups)


def _function_for(device_type: str) -> type[torch.autograd.Function]:
    class _GroupRational(torch.autograd.Function):
        """(x (N, C) contiguous, numerator, denominator, groups, compile, triton) -> F(x) (N, C) in x's dtype."""

        @staticmethod
        @torch.amp.custom_fwd(device_type=device_type)
        def forward(ctx, x, a, b, groups: int, compile: bool | None, triton: bool | None):
            ctx.save_for_backward(x, a, b)
            ctx.cfg = (groups, compile, triton)
            with no_autocast(x.device.type):  # every cast is explicit: float32 arithmetic, output in x's dtype
                return _forward(x, a, b, groups, compile, triton)

        @staticmethod
        @torch.amp.custom_bwd(device_type=device_type)
        def backward(ctx, grad):
            x, a, b = ctx.saved_tensors
            groups, compile, triton = ctx.cfg
            need = ctx.needs_input_grad[:3]
            if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
                wanted = [t for t, n in zip((x, a, b), need) if n]
                grads = iter(torch.autograd.grad(rational_reference(x, a, b, groups), wanted, grad,
                                                 create_graph=True))
                return (*(next(grads) if n else None for n in need), None, None, None)
            with no_autocast(x.device.type):
                gx, ga, gb = _backward(grad, x, a, b, groups, compile, triton)
            return gx if need[0] else None, ga if need[1] else None, gb if need[2] else None, None, None, None

    _GroupRational.__name__ = _GroupRational.__qualname__ = f"GroupRationalFunction_{device_type}"
    return _GroupRational


# One Function per autocast device type (torch.amp.custom_fwd takes it as a constant); others use the CPU one.
GroupRationalFunction = {"cpu": _function_for("cpu"), "cuda": _function_for("cuda")}


def group_rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, groups: int,
                   compile: bool | None = None, triton: bool | None = None) -> torch.Tensor:
    """F(x) for x (N, C) (made contiguous), in x's dtype. compile: None compiles the torch kernels where that
    works, False keeps them eager; triton: None uses the Triton kernels on CUDA, False never."""
    fn = GroupRationalFunction["cuda" if x.device.type == "cuda" else "cpu"]
    return fn.apply(x.contiguous(), numerator, denominator, int(groups), compile, triton)
