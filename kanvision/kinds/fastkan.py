"""FastKAN (Ziyao Li): LayerNorm -> Gaussian radial basis -> bias-free linear, plus a SiLU base branch.

    y = W_s flatten_{i,j} exp(-((LN(x)_i - c_j) / h)^2) + W_b SiLU(x) + b

Exact to ZiyaoLi/fast-kan, fastkan/fastkan.py, `FastKANLayer` (with `RadialBasisFunction`, `SplineLinear`), read
at commit 17b6540: num_grids = 8 centres c_j evenly on [grid_min, grid_max] = [-2, 2], width
h = (grid_max - grid_min) / (num_grids - 1) = 4/7 (the layer never passes its own width, so h always follows the
range), spline weight trunc_normal(0, std 0.1) (truncated at +-2, absolute, as `nn.init.trunc_normal_` defaults),
base branch an `nn.Linear(in, out)` with bias and nn.Linear's own init, applied to the raw x (not the normalised
one). State-dict keys as published: layernorm.weight/bias, rbf.grid (a Parameter with requires_grad=False),
spline_linear.weight (out, in * num_grids; column i * num_grids + j is input i, centre j), base_linear.weight/bias.
Trainable parameters: num_grids in out + (in out + out if use_base_update) + (2 in if use_layernorm).
The constructor draws from the RNG in the published order (spline, base weight, base bias): the same seed gives
the published weights.

Fast path (`impl="fast"`, the default): one autograd Function computes both branches and saves only LN(x) and x
(x is saved by the LayerNorm anyway); the (N, in * num_grids) basis is rebuilt in backward. Its kernels are plain
tensor ops that torch.compile fuses: traced into the caller's graph under `torch.compile(model)`, compiled per
variant into a reused scratch buffer when the layer's `compile` allows (kanvision.kinds.compile), eager otherwise.
A base activation other than SiLU runs its branch through plain autograd beside the Function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kanvision.kinds.autocast import autocast_dtype, no_autocast
from kanvision.kinds.kernels import math_dtype, scratch_kernel
from kanvision.kinds.registry import Kind
from kanvision.kinds.scripting import no_torchscript
from kanvision.kinds.workspace import scratch

__all__ = ["KIND", "FastKANFunction", "FastKANLayer", "RadialBasisFunction", "SplineLinear", "basis_flops"]


# The kernels update their own intermediates in place (fewer (N, in, G) temporaries in eager mode; the compiler
# sees through it) but never their inputs, which a compiled kernel would have to write back.
def _scaled_distance(u: torch.Tensor, grid: torch.Tensor, h: float, dtype: torch.dtype) -> torch.Tensor:
    return (u.to(dtype).unsqueeze(-1) - grid.to(dtype)).div_(h)


def features(u, x, grid, h: float, out_dtype: torch.dtype, out=None):
    """(basis (N, in, G) in out_dtype [written into `out` when given], SiLU(x) in out_dtype or None)."""
    dtype = math_dtype(u)
    z = _scaled_distance(u, grid, h, dtype)
    b = z.mul_(z).neg_().exp_().to(out_dtype)
    s = None if x is None else F.silu(x.to(dtype)).to(out_dtype)
    return (b if out is None else out.copy_(b)), s


def features_backward(u, x, gb, gs, grid, h: float, out=None):
    """(basis in gb's dtype [into `out`], SiLU(x) in gb's dtype, dL/du, dL/dx of the base branch) from the basis
    gradient gb (N, in, G) and the SiLU(x) gradient gs. d exp(-z^2)/du = -2 z exp(-z^2) / h;
    SiLU'(x) = s (1 + x (1 - s)), s = sigmoid(x). Float32 (float64) arithmetic for any feature dtype."""
    dtype = math_dtype(u)
    z = _scaled_distance(u, grid, h, dtype)
    b = z.square().neg_().exp_()
    gu = (gb.to(dtype) * b).mul_(z).sum(-1).mul_(-2.0 / h)
    s = gx = None
    if x is not None:
        xs = x.to(dtype)
        sig = torch.sigmoid(xs)
        gx = (gs.to(dtype) * sig * (1 + xs * (1 - sig))).to(x.dtype)
        s = (xs * sig).to(gb.dtype)
    b = b.to(gb.dtype)
    return (b if out is None else out.copy_(b)), s, gu.to(u.dtype), gx


def reference_output(u, x, spline_weight, base_weight, base_bias, grid, h: float, cdtype: torch.dtype):
    """The published formula with plain autograd (used for create_graph backwards: exact second derivatives)."""
    b = torch.exp(-((u.unsqueeze(-1) - grid.to(u.dtype)) / h) ** 2).flatten(1)
    y = b.to(cdtype) @ spline_weight.to(cdtype).t()
    if x is not None:
        y = y + F.linear(F.silu(x).to(cdtype), base_weight.to(cdtype), base_bias.to(cdtype))
    return y


class FastKANFunction(torch.autograd.Function):
    """(u = LN(x) (N, in), x (N, in) or None, spline_weight (out, in G), base_weight, base_bias, grid (G,), h,
    compile, cdtype) -> (N, out) in cdtype. x None: the base branch is not part of the Function. Saves u, x and
    the parameters; backward rebuilds the basis."""

    @staticmethod
    def forward(ctx, u, x, spline_weight, base_weight, base_bias, grid, h, compile, cdtype):
        n, width = u.shape
        with no_autocast(u.device.type):  # every cast below is explicit
            shape = (n, width, grid.numel())
            b, s = scratch_kernel(features, "features", (u, x, grid, h, cdtype), shape, cdtype, compile,
                           (width, grid.numel(), h, x is None))
            y = torch.mm(b.flatten(1), spline_weight.to(cdtype).t())
            if x is not None:
                y = torch.addmm(y, s, base_weight.to(cdtype).t()).add_(base_bias.to(cdtype))
        ctx.save_for_backward(u, x, spline_weight, base_weight, base_bias, grid)
        ctx.cfg = (h, compile, cdtype)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        u, x, ws, wb, bb, grid = ctx.saved_tensors
        h, compile, cdtype = ctx.cfg
        need = ctx.needs_input_grad[:5]
        inputs = (u, x, ws, wb, bb)
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain formula
            wanted = [t for t, n in zip(inputs, need) if n]
            with torch.enable_grad():
                out = reference_output(u, x, ws, wb, bb, grid, h, cdtype)
            grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
            return (*(next(grads) if n else None for n in need), None, None, None, None)
        traced = torch.compiler.is_compiling()
        n, width = u.shape
        g_count = grid.numel()
        with no_autocast(u.device.type):
            grad_out = grad_out.to(cdtype).contiguous()
            if traced or u.device.type == "meta":
                gb = torch.mm(grad_out, ws.to(cdtype)).view(n, width, g_count)
            else:
                gb = scratch((n, width, g_count), cdtype, u.device)
                torch.mm(grad_out, ws.to(cdtype), out=gb.flatten(1))
            gs = None if x is None else torch.mm(grad_out, wb.to(cdtype))
            b, s, gu, gx = scratch_kernel(features_backward, "backward", (u, x, gb, gs, grid, h), gb.shape, cdtype, compile,
                                   (width, g_count, h, x is None))
            gws = torch.mm(grad_out.t(), b.flatten(1)).to(ws.dtype) if need[2] else None
            gwb = torch.mm(grad_out.t(), s).to(wb.dtype) if x is not None and need[3] else None
            gbb = grad_out.sum(0).to(bb.dtype) if x is not None and need[4] else None
        return (gu if need[0] else None), (gx if need[1] else None), gws, gwb, gbb, None, None, None, None


class SplineLinear(nn.Linear):
    """Bias-free nn.Linear whose init is trunc_normal(0, init_scale) (fast-kan's SplineLinear)."""

    def __init__(self, in_features: int, out_features: int, init_scale: float = 0.1, device=None, dtype=None):
        self.init_scale = float(init_scale)
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            nn.init.trunc_normal_(self.weight, mean=0.0, std=self.init_scale)


class RadialBasisFunction(nn.Module):
    """exp(-((u - c_j) / h)^2) for num_grids centres c_j on [grid_min, grid_max], h = range / (num_grids - 1).
    The centres are a Parameter that does not train (`rbf.grid`, as published); h is a Python number."""

    def __init__(self, grid_min: float = -2.0, grid_max: float = 2.0, num_grids: int = 8, device=None, dtype=None):
        super().__init__()
        self.grid_min, self.grid_max, self.num_grids = float(grid_min), float(grid_max), int(num_grids)
        grid = torch.linspace(self.grid_min, self.grid_max, self.num_grids, device=device, dtype=dtype)
        self.grid = nn.Parameter(grid, requires_grad=False)
        self.denominator = (self.grid_max - self.grid_min) / (self.num_grids - 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((u.unsqueeze(-1) - self.grid) / self.denominator) ** 2)


def _is_silu(act) -> bool:
    return isinstance(act, nn.SiLU) or act is F.silu


@no_torchscript
class FastKANLayer(nn.Module):
    """FastKAN layer (see the module docstring). Keywords as published, plus device/dtype, `impl` ("fast" or
    "reference" = plain autograd; None = "fast") and `compile` (None: compile the fast kernels where that works,
    True: ask for it, False: eager). `base_activation`: an nn.Module class (kanvision's convention; default
    nn.SiLU), or a function (the published default is F.silu). Inputs (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, grid_min: float = -2.0, grid_max: float = 2.0,
                 num_grids: int = 8, use_base_update: bool = True, use_layernorm: bool = True,
                 base_activation=nn.SiLU, spline_weight_init_scale: float = 0.1, device=None, dtype=None,
                 impl: str | None = None, compile: bool | None = None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ValueError(f"FastKANLayer: {name} must be an integer >= 1, got {value!r}")
        if isinstance(num_grids, bool) or int(num_grids) != num_grids or int(num_grids) < 2:
            raise ValueError(f"FastKANLayer: num_grids must be an integer >= 2 (h = range / (num_grids - 1)), "
                             f"got {num_grids!r}")
        if not float(grid_min) < float(grid_max):
            raise ValueError(f"FastKANLayer: grid_min must be < grid_max, got {grid_min}, {grid_max}")
        if not float(spline_weight_init_scale) > 0:
            raise ValueError(f"FastKANLayer: spline_weight_init_scale must be > 0, got {spline_weight_init_scale}")
        if use_layernorm and int(in_features) < 2:
            raise ValueError("FastKANLayer: use_layernorm needs in_features >= 2 (a LayerNorm of one value is its "
                             "bias); pass use_layernorm=False")
        if impl not in (None, "fast", "reference"):
            raise ValueError(f"FastKANLayer: impl must be 'fast' or 'reference' (or None), got {impl!r}")
        if isinstance(base_activation, type) and issubclass(base_activation, nn.Module):
            base_activation = base_activation()
        elif not callable(base_activation):
            raise ValueError(f"FastKANLayer: base_activation must be an nn.Module class or a function, "
                             f"got {base_activation!r}")
        factory = dict(device=device, dtype=dtype)
        self.in_features, self.out_features, self.num_grids = int(in_features), int(out_features), int(num_grids)
        self.impl, self.compile = impl or "fast", None if compile is None else bool(compile)
        self.use_base_update = bool(use_base_update)
        # Construction order = the published draw order: spline weight, then base weight and bias.
        self.layernorm = nn.LayerNorm(self.in_features, **factory) if use_layernorm else None
        self.rbf = RadialBasisFunction(grid_min, grid_max, num_grids, **factory)
        self.spline_linear = SplineLinear(self.in_features * self.num_grids, self.out_features,
                                          spline_weight_init_scale, **factory)
        if self.use_base_update:
            self.base_activation = base_activation
            self.base_linear = nn.Linear(self.in_features, self.out_features, **factory)

    def reset_parameters(self) -> None:
        """The published init (after a host model's init pass overwrote the nn.Linear weights)."""
        if self.layernorm is not None:
            self.layernorm.reset_parameters()
        self.spline_linear.reset_parameters()
        if self.use_base_update and not self.base_linear.weight.is_meta:
            self.base_linear.reset_parameters()

    @property
    def fused_base(self) -> bool:
        """The base branch runs inside the fast Function (SiLU): nothing but x and LN(x) is saved."""
        return self.use_base_update and _is_silu(self.base_activation)

    def saved_floats_per_row(self) -> int:
        """Floats the fast path keeps for backward per input row: x; LN(x) with its mean and 1/std; the base
        activation's output when it is not SiLU (nn.Linear saves it)."""
        ln = self.layernorm is not None
        return self.in_features * (1 + ln + (self.use_base_update and not self.fused_base)) + 2 * ln

    def forward(self, x: torch.Tensor, use_layernorm: bool = True) -> torch.Tensor:
        if x.dim() == 0 or x.size(-1) != self.in_features:
            raise ValueError(f"FastKANLayer: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        u = self.layernorm(x) if self.layernorm is not None and use_layernorm else x
        if self.impl == "reference" or self.rbf.grid.requires_grad:  # the fast path treats the centres as constants
            y = self.spline_linear(self.rbf(u).flatten(-2))
            return y + self.base_linear(self.base_activation(x)) if self.use_base_update else y
        lead = x.shape[:-1]
        u2, x2 = u.reshape(-1, self.in_features), x.reshape(-1, self.in_features)
        fused = self.fused_base
        base = (self.base_linear.weight, self.base_linear.bias) if fused else (None, None)
        y = FastKANFunction.apply(u2, x2 if fused else None, self.spline_linear.weight, *base, self.rbf.grid,
                                  self.rbf.denominator, self.compile, autocast_dtype(u2))
        if self.use_base_update and not fused:
            y = y + self.base_linear(self.base_activation(x2))
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, num_grids={self.num_grids}, "
                f"h={self.rbf.denominator:.6g}, impl={self.impl!r}, compile={self.compile}")


def basis_flops(num_grids: int) -> int:
    """FLOPs of exp(-((u - c_j) / h)^2) over the centres for one input value: 4 per centre (subtract, divide by
    h, square, exp; the sign flip is not counted), 32 for the default 8 centres. The LayerNorm before it and the
    SiLU base branch are not basis work (as for the B-spline kind, whose SiLU base is not counted either)."""
    return 4 * int(num_grids)


def _params(i: int, o: int, kw) -> int:
    g = int(kw.get("num_grids", 8))
    return g * i * o + (i * o + o if kw.get("use_base_update", True) else 0) + (2 * i if kw.get("use_layernorm", True)
                                                                                 else 0)


KIND = Kind(
    name="fastkan", layer=FastKANLayer, title="FastKAN (Gaussian RBF, fast-kan)",
    formula="y = W_s flatten_j exp(-((LN(x) - c_j)/h)^2) + W_b SiLU(x) + b,  8 centres on [-2, 2], h = 4/7",
    source="ZiyaoLi/fast-kan, fastkan/fastkan.py, FastKANLayer",
    params=_params, basis_flops=lambda layer: basis_flops(layer.num_grids),
    hidden="dim", act_keyword="base_activation", act_default=nn.SiLU,
    integer_kwargs=frozenset({"num_grids"}), activation_kwargs=frozenset({"base_activation"}),
    # timm's init pass puts trunc_normal(0.02) on spline_linear and base_linear (both nn.Linear).
    reinit_after_host=True, impls=("fast", "reference"), fused="compiled",
    # RSWAF's layer has the first three keys too: the base branch tells the two apart.
    key_markers=(".spline_linear.weight", ".rbf.grid", ".layernorm.weight", ".base_linear.weight"),
    memory=lambda layer: layer.saved_floats_per_row(),
)
