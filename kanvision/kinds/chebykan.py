"""ChebyKAN (SynodicMonth): Chebyshev polynomials of tanh(x), one coefficient per edge and degree.

    y_o = sum_{i, d} C[i, o, d] T_d(tanh x_i),   d = 0 .. degree

Exact to SynodicMonth/ChebyKAN, ChebyKANLayer.py, `ChebyKANLayer(input_dim, output_dim, degree)`, read at commit
5f7efdd: `cheby_coeffs` (in, out, degree + 1) ~ N(0, std = 1 / (in (degree + 1))) (the standard deviation, not
the variance, is that number), an integer buffer `arange` (0 .. degree; kept so published state dicts load
strictly), no bias, in out (degree + 1) trainable parameters. The published layer has no default degree;
kanvision's is 4.

One deliberate difference in how the same function is evaluated: the published code computes
T_d(t) = cos(d acos t), whose derivative d sin(d acos t) / sqrt(1 - t^2) is 0/0 at |t| = 1, so gradients are
NaN (or inf) wherever tanh saturates to +-1 (|x| > ~9 in float32). Here T_d comes from the three-term recurrence
T_0 = 1, T_1 = t, T_d = 2 t T_{d-1} - T_{d-2} (the same polynomials; T'_d by the differentiated recurrence), finite
everywhere. The published layer also flattens every leading dimension into the batch ((B, T, in) -> (B T, out));
this one keeps them ((..., in) -> (..., out)).

Fast path (`impl="fast"`, default): one autograd Function saves x only and rebuilds the (N, in, degree + 1)
basis in backward; kernels traced under torch.compile(model), compiled per variant into a reused scratch buffer
when `compile` allows, eager otherwise (see fastkan.py).
"""
from __future__ import annotations

import torch
from torch import nn

from kanvision.kinds.autocast import autocast_dtype, no_autocast
from kanvision.kinds.kernels import math_dtype, scratch_kernel
from kanvision.kinds.registry import Kind
from kanvision.kinds.scripting import no_torchscript
from kanvision.kinds.workspace import scratch

__all__ = ["KIND", "ChebyKANFunction", "ChebyKANLayer", "basis_flops", "chebyshev_basis"]


# The kernels update their own intermediates in place (fewer temporaries in eager mode; the compiler sees
# through it) but never their inputs, which a compiled kernel would have to write back.
def _polys(t: torch.Tensor, degree: int) -> list[torch.Tensor]:
    polys = [torch.ones_like(t), t]
    two_t = 2 * t
    for _ in range(2, degree + 1):
        polys.append(torch.mul(two_t, polys[-1]).sub_(polys[-2]))
    return polys[:degree + 1]


def chebyshev_basis(x: torch.Tensor, degree: int) -> torch.Tensor:
    """T_d(tanh x) for d = 0 .. degree by the recurrence: (...,) -> (..., degree + 1), in x's dtype, autograd-able."""
    return torch.stack(_polys(torch.tanh(x), int(degree)), -1)


def features(x, degree: int, out_dtype: torch.dtype, out=None):
    """The (N, in, degree + 1) basis in out_dtype (float32 / float64 arithmetic), into `out` when given."""
    b = torch.stack(_polys(torch.tanh(x.to(math_dtype(x))), degree), -1).to(out_dtype)
    return b if out is None else out.copy_(b)


def features_backward(x, gb, degree: int, out=None):
    """(basis in gb's dtype [into `out`], dL/dx) from the basis gradient gb (N, in, degree + 1):
    T'_0 = 0, T'_1 = 1, T'_d = 2 T_{d-1} + 2 t T'_{d-1} - T'_{d-2};  dt/dx = 1 - t^2."""
    dtype = math_dtype(x)
    t = torch.tanh(x.to(dtype))
    polys = _polys(t, degree)
    g = gb.to(dtype)
    gt = torch.zeros_like(t)
    if degree >= 1:
        slopes = [torch.zeros_like(t), torch.ones_like(t)]
        gt.add_(g[..., 1])
        two_t = 2 * t
        for d in range(2, degree + 1):
            slopes.append(torch.mul(two_t, slopes[-1]).add_(polys[d - 1], alpha=2).sub_(slopes[-2]))
            gt.addcmul_(g[..., d], slopes[-1])
    b = torch.stack(polys, -1).to(gb.dtype)
    return (b if out is None else out.copy_(b)), gt.mul_(1 - t * t).to(x.dtype)


def _weight(coeffs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # (in, out, D + 1) -> (out, in (D + 1)), column i (D + 1) + d, matching the (N, in, D + 1) basis.
    return coeffs.to(dtype).permute(1, 0, 2).reshape(coeffs.size(1), -1)


class ChebyKANFunction(torch.autograd.Function):
    """(x (N, in), cheby_coeffs (in, out, D + 1), degree, compile, cdtype) -> (N, out) in cdtype. Saves x."""

    @staticmethod
    def forward(ctx, x, coeffs, degree, compile, cdtype):
        n, width = x.shape
        with no_autocast(x.device.type):
            b = scratch_kernel(features, "features", (x, degree, cdtype), (n, width, degree + 1), cdtype, compile,
                        (width, degree))
            y = torch.mm(b.flatten(1), _weight(coeffs, cdtype).t())
        ctx.save_for_backward(x, coeffs)
        ctx.cfg = (degree, compile, cdtype)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, coeffs = ctx.saved_tensors
        degree, compile, cdtype = ctx.cfg
        need = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain formula
            wanted = [t for t, n in zip((x, coeffs), need) if n]
            with torch.enable_grad():
                b = chebyshev_basis(x, degree).to(cdtype).flatten(1)
                out = b @ _weight(coeffs, cdtype).t()
            grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
            return (*(next(grads) if n else None for n in need), None, None, None)
        n, width = x.shape
        with no_autocast(x.device.type):
            grad_out = grad_out.to(cdtype).contiguous()
            w = _weight(coeffs, cdtype)
            if torch.compiler.is_compiling() or x.device.type == "meta":
                gb = torch.mm(grad_out, w).view(n, width, degree + 1)
            else:
                gb = scratch((n, width, degree + 1), cdtype, x.device)
                torch.mm(grad_out, w, out=gb.flatten(1))
            b, gx = scratch_kernel(features_backward, "backward", (x, gb, degree), gb.shape, cdtype, compile, (width, degree))
            gc = None
            if need[1]:  # (out, in (D + 1)) -> (in, out, D + 1)
                gc = torch.mm(grad_out.t(), b.flatten(1)).view(-1, width, degree + 1).permute(1, 0, 2)
                gc = gc.to(coeffs.dtype).contiguous()
        return (gx if need[0] else None), gc, None, None, None


@no_torchscript
class ChebyKANLayer(nn.Module):
    """ChebyKAN layer (see the module docstring): (..., in) -> (..., out). `impl`: "fast" (default) or
    "reference" (plain autograd on the recurrence); `compile`: None (compile the fast kernels where that
    works), True (ask for it), False (eager)."""

    def __init__(self, in_features: int, out_features: int, degree: int = 4, device=None, dtype=None,
                 impl: str | None = None, compile: bool | None = None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ValueError(f"ChebyKANLayer: {name} must be an integer >= 1, got {value!r}")
        if isinstance(degree, bool) or int(degree) != degree or int(degree) < 0:
            raise ValueError(f"ChebyKANLayer: degree must be an integer >= 0, got {degree!r}")
        if impl not in (None, "fast", "reference"):
            raise ValueError(f"ChebyKANLayer: impl must be 'fast' or 'reference' (or None), got {impl!r}")
        self.in_features, self.out_features, self.degree = int(in_features), int(out_features), int(degree)
        self.impl, self.compile = impl or "fast", None if compile is None else bool(compile)
        self.cheby_coeffs = nn.Parameter(torch.empty(self.in_features, self.out_features, self.degree + 1,
                                                     device=device, dtype=dtype))
        self.register_buffer("arange", torch.arange(0, self.degree + 1, 1, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """cheby_coeffs ~ N(0, std = 1 / (in (degree + 1))), as published."""
        if not self.cheby_coeffs.is_meta:
            nn.init.normal_(self.cheby_coeffs, mean=0.0, std=1 / (self.in_features * (self.degree + 1)))

    def saved_floats_per_row(self) -> int:
        """The fast path keeps x (in floats per row) for backward, nothing else."""
        return self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.size(-1) != self.in_features:
            raise ValueError(f"ChebyKANLayer: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        if self.impl == "reference":
            return torch.einsum("...id,iod->...o", chebyshev_basis(x, self.degree), self.cheby_coeffs)
        x2 = x.reshape(-1, self.in_features)
        y = ChebyKANFunction.apply(x2, self.cheby_coeffs, self.degree, self.compile, autocast_dtype(x2))
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, degree={self.degree}, "
                f"impl={self.impl!r}, compile={self.compile}")


def basis_flops(degree: int) -> int:
    """FLOPs of T_0..T_D(tanh x) by the recurrence for one input value: 1 tanh, then 3 per degree d >= 2
    (2 t T_{d-1} is two multiplications, minus T_{d-2} one subtraction); T_0 = 1 and T_1 = t are free.
    1 + 3 (D - 1) = 10 at D = 4. (The published cos(d acos t) form: tanh, acos, D + 1 multiplications by d and
    D + 1 cosines, 2 D + 4 = 12 if acos and cos count one each; same function.)"""
    d = int(degree)
    return 1 + 3 * max(d - 1, 0)


KIND = Kind(
    name="chebykan", layer=ChebyKANLayer, title="ChebyKAN (Chebyshev, SynodicMonth)",
    formula="y = sum_{i,d} C[i,o,d] T_d(tanh x_i),  degree 4 (T_d by recurrence)",
    source="SynodicMonth/ChebyKAN, ChebyKANLayer.py, ChebyKANLayer",
    params=lambda i, o, kw: i * o * (int(kw.get("degree", 4)) + 1),
    basis_flops=lambda layer: basis_flops(layer.degree),
    defaults={"degree": 4}, hidden="dim", integer_kwargs=frozenset({"degree"}),
    reinit_after_host=False,  # cheby_coeffs is a plain Parameter: timm's nn.Linear init pass never visits it
    impls=("fast", "reference"), fused="compiled",
    key_markers=(".cheby_coeffs", ".arange"),
    memory=lambda layer: layer.saved_floats_per_row(),
)
