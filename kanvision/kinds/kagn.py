"""KAGN (Ivan Drokin, torch-conv-kan): Gram polynomials of tanh(x), SiLU'd, plus a SiLU base branch, LayerNorm'd.

    y = SiLU(LayerNorm_out(W_b SiLU(x) + sum_{i,d} C[i, o, d] SiLU(P_d(tanh x_i))))
    P_0 = 1, P_1 = z, P_d = z P_{d-1} - beta(d-1, d) P_{d-2},
    beta(n, m) = w_n (m + n)(m - n) n^2 / (m^2 / (4 n^2 - 1)) = w_n (m + n)(m - n) n^2 (4 n^2 - 1) / m^2

Exact to IvanDrokin/torch-conv-kan, kans/layers.py, `GRAMLayer(in_channels, out_channels, degree=3, act=nn.SiLU)`,
read at commit 7a0e83c. The same activation module is applied three times: to x (base branch), to every Gram
polynomial (P_0 = 1 included), and after the LayerNorm over the outputs. Keys and inits as published:
`beta_weights` (degree + 1; only w_1 .. w_{degree-1} enter the function) ~ N(0, std = 1 / (in (degree + 1))),
`grams_basis_weights` (in, out, degree + 1) and `base_weights` (out, in) xavier-uniform (torch's fans for a
3-D tensor: fan_in = out (degree + 1), fan_out = in (degree + 1)), `norm` = nn.LayerNorm(out) (weight 1, bias 0).
Trainable parameters: in out (degree + 2) + degree + 1 + 2 out. The constructor draws in the published order
(beta, Gram, base), so one seed gives the published weights.

Not reproduced: the published `gram_poly` is wrapped in functools.lru_cache, keyed on the input tensor object;
it keeps up to 128 input tensors (and their graphs) alive, and would hand back a stale basis, computed with old
beta_weights, if the same tensor object came back. The published layer also flattens leading dimensions into
the batch; this one keeps them ((..., in) -> (..., out)).

Fast path (`impl="fast"`, default, SiLU only): one autograd Function computes the pre-norm sum from a single
(N, in, degree + 2) feature tensor [SiLU(x), SiLU(P_0..P_D)] and one matrix product, saves only x, and rebuilds
the features in backward, where the Gram recurrence is differentiated by hand (input and beta_weights gradients).
The LayerNorm and the final SiLU stay ordinary ops. Kernels as in fastkan.py.
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

__all__ = ["KIND", "KAGNFunction", "KAGNLayer", "basis_flops", "beta_coefficient", "gram_basis"]


def beta_coefficient(n: int, m: int) -> float:
    """The constant of beta(n, m) = w_n * this, in the published operation order: (m+n)(m-n) n^2 / (m^2 / (4n^2-1))."""
    return ((m + n) * (m - n) * n ** 2) / (m ** 2 / (4.0 * n ** 2 - 1.0))


def _polys(z: torch.Tensor, beta_weights: torch.Tensor, degree: int) -> list[torch.Tensor]:
    polys = [torch.ones_like(z), z]
    for d in range(2, degree + 1):
        beta = beta_coefficient(d - 1, d) * beta_weights[d - 1].to(z.dtype)
        polys.append(z * polys[-1] - beta * polys[-2])
    return polys[:degree + 1]


def gram_basis(x: torch.Tensor, beta_weights: torch.Tensor, degree: int) -> torch.Tensor:
    """P_d(tanh x), d = 0 .. degree: (...,) -> (..., degree + 1), autograd-able (before the activation)."""
    return torch.stack(_polys(torch.tanh(x), beta_weights, int(degree)), -1)


def features(x, beta_weights, degree: int, out_dtype: torch.dtype, out=None):
    """[SiLU(x), SiLU(P_0(z)), .., SiLU(P_D(z))], z = tanh x: (N, in, D + 2) in out_dtype, into `out` if given."""
    xs = x.to(math_dtype(x))
    polys = _polys(torch.tanh(xs), beta_weights, degree)
    f = torch.stack([F.silu(xs)] + [F.silu(p) for p in polys], -1).to(out_dtype)
    return f if out is None else out.copy_(f)


def _silu_slope(v: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(v)
    return s * (1 + v * (1 - s))


def features_backward(x, beta_weights, gf, degree: int, out=None):
    """(features in gf's dtype [into `out`], dL/dx, dL/dbeta_weights) from the feature gradient gf (N, in, D + 2).

    Reverse pass through P_d = z P_{d-1} - k_d w_{d-1} P_{d-2} (k_d = beta_coefficient(d - 1, d)), d = D .. 2,
    with a_d = dL/dP_d complete when d is reached: a_{d-1} += z a_d, a_{d-2} -= k_d w_{d-1} a_d,
    dL/dz += a_d P_{d-1}, dL/dw_{d-1} = -k_d sum(a_d P_{d-2}); then dL/dz += a_1, dL/dx = dL/dz (1 - z^2) plus the
    base branch's g_0 SiLU'(x)."""
    dtype = math_dtype(x)
    xs = x.to(dtype)
    z = torch.tanh(xs)
    polys = _polys(z, beta_weights, degree)
    g = gf.to(dtype)
    adj = [g[..., 1 + d] * _silu_slope(p) for d, p in enumerate(polys)]
    # adj[d] are fresh tensors (products), so updating them in place touches no input.
    gz = torch.zeros_like(z)
    gbeta = [torch.zeros((), dtype=dtype, device=x.device) for _ in range(degree + 1)]
    for d in range(degree, 1, -1):
        k = beta_coefficient(d - 1, d)
        a = adj[d]
        gz.addcmul_(a, polys[d - 1])
        adj[d - 1].addcmul_(z, a)
        adj[d - 2].sub_((k * beta_weights[d - 1].to(dtype)) * a)
        gbeta[d - 1] = -k * (a * polys[d - 2]).sum()
    if degree >= 1:
        gz.add_(adj[1])
    gx = gz.mul_(1 - z * z).addcmul_(g[..., 0], _silu_slope(xs))
    f = torch.stack([F.silu(xs)] + [F.silu(p) for p in polys], -1).to(gf.dtype)
    return (f if out is None else out.copy_(f)), gx.to(x.dtype), torch.stack(gbeta).to(beta_weights.dtype)


def _weight(base_weights, grams, dtype):
    # [W_b | C] as (out, in (D + 2)), column i (D + 2) + k matching the (N, in, D + 2) features (k = 0: base).
    w = torch.cat([base_weights.to(dtype).unsqueeze(-1), grams.to(dtype).permute(1, 0, 2)], -1)
    return w.reshape(base_weights.size(0), -1)


def reference_sum(x, base_weights, grams, beta_weights, degree: int, cdtype):
    """The pre-norm sum with plain autograd (create_graph backwards: exact second derivatives)."""
    f = torch.cat([F.silu(x).unsqueeze(-1), F.silu(gram_basis(x, beta_weights, degree))], -1)
    return f.to(cdtype).flatten(1) @ _weight(base_weights, grams, cdtype).t()


class KAGNFunction(torch.autograd.Function):
    """(x (N, in), base_weights (out, in), grams_basis_weights (in, out, D + 1), beta_weights (D + 1,), degree,
    compile, cdtype) -> the pre-norm sum (N, out) in cdtype. Saves x and the parameters."""

    @staticmethod
    def forward(ctx, x, base_weights, grams, beta_weights, degree, compile, cdtype):
        n, width = x.shape
        with no_autocast(x.device.type):
            f = scratch_kernel(features, "features", (x, beta_weights, degree, cdtype), (n, width, degree + 2), cdtype,
                        compile, (width, degree))
            y = torch.mm(f.flatten(1), _weight(base_weights, grams, cdtype).t())
        ctx.save_for_backward(x, base_weights, grams, beta_weights)
        ctx.cfg = (degree, compile, cdtype)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, wb, grams, beta = ctx.saved_tensors
        degree, compile, cdtype = ctx.cfg
        need = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain formula
            wanted = [t for t, n in zip((x, wb, grams, beta), need) if n]
            with torch.enable_grad():
                out = reference_sum(x, wb, grams, beta, degree, cdtype)
            grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
            grads = [next(grads) if n else None for n in need]
            if grads[3] is None and need[3]:  # degree < 2: beta_weights do not enter the function
                grads[3] = torch.zeros_like(beta)
            return (*grads, None, None, None)
        n, width = x.shape
        slots = degree + 2
        with no_autocast(x.device.type):
            grad_out = grad_out.to(cdtype).contiguous()
            w = _weight(wb, grams, cdtype)
            if torch.compiler.is_compiling() or x.device.type == "meta":
                gf = torch.mm(grad_out, w).view(n, width, slots)
            else:
                gf = scratch((n, width, slots), cdtype, x.device)
                torch.mm(grad_out, w, out=gf.flatten(1))
            f, gx, gbeta = scratch_kernel(features_backward, "backward", (x, beta, gf, degree), gf.shape, cdtype, compile,
                                   (width, degree))
            gwb = ggrams = None
            if need[1] or need[2]:
                gw = torch.mm(grad_out.t(), f.flatten(1)).view(-1, width, slots)
                gwb = gw[..., 0].to(wb.dtype).contiguous() if need[1] else None
                ggrams = gw[..., 1:].permute(1, 0, 2).to(grams.dtype).contiguous() if need[2] else None
        return (gx if need[0] else None), gwb, ggrams, (gbeta if need[3] else None), None, None, None


@no_torchscript
class KAGNLayer(nn.Module):
    """KAGN layer (torch-conv-kan's GRAMLayer; see the module docstring): (..., in) -> (..., out).

    `act`: an nn.Module class (published default nn.SiLU); the fast path needs SiLU, any other runs the plain
    formula. `impl`: "fast" (default) or "reference" (plain autograd); `compile`: None (compile the fast
    kernels where that works), True (ask for it), False (eager)."""

    def __init__(self, in_features: int, out_features: int, degree: int = 3, act=nn.SiLU, device=None, dtype=None,
                 impl: str | None = None, compile: bool | None = None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ValueError(f"KAGNLayer: {name} must be an integer >= 1, got {value!r}")
        if isinstance(degree, bool) or int(degree) != degree or int(degree) < 0:
            raise ValueError(f"KAGNLayer: degree must be an integer >= 0, got {degree!r}")
        if not (isinstance(act, type) and issubclass(act, nn.Module)):
            raise ValueError(f"KAGNLayer: act must be an nn.Module class (e.g. nn.SiLU), got {act!r}")
        if impl not in (None, "fast", "reference"):
            raise ValueError(f"KAGNLayer: impl must be 'fast' or 'reference' (or None), got {impl!r}")
        factory = dict(device=device, dtype=dtype)
        self.in_features, self.out_features, self.degree = int(in_features), int(out_features), int(degree)
        self.impl, self.compile = impl or "fast", None if compile is None else bool(compile)
        self.act = act()
        self.norm = nn.LayerNorm(self.out_features, **factory)
        self.beta_weights = nn.Parameter(torch.empty(self.degree + 1, **factory))
        self.grams_basis_weights = nn.Parameter(torch.empty(self.in_features, self.out_features, self.degree + 1,
                                                            **factory))
        self.base_weights = nn.Parameter(torch.empty(self.out_features, self.in_features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The published init, in the published order: beta ~ N(0, 1 / (in (degree + 1))), then xavier-uniform
        Gram and base weights; LayerNorm weight 1, bias 0."""
        self.norm.reset_parameters()
        if self.base_weights.is_meta:
            return
        nn.init.normal_(self.beta_weights, mean=0.0, std=1.0 / (self.in_features * (self.degree + 1.0)))
        nn.init.xavier_uniform_(self.grams_basis_weights)
        nn.init.xavier_uniform_(self.base_weights)

    @property
    def fused(self) -> bool:
        return self.impl == "fast" and isinstance(self.act, nn.SiLU)

    def saved_floats_per_row(self) -> int:
        """Fast path, floats kept for backward per input row: x (in); the LayerNorm's input (out) with its mean and
        1/std (2); the final SiLU's input (out)."""
        return self.in_features + 2 * self.out_features + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.size(-1) != self.in_features:
            raise ValueError(f"KAGNLayer: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        if not self.fused:
            base = F.linear(self.act(x), self.base_weights)
            grams = self.act(gram_basis(x, self.beta_weights, self.degree))
            y = torch.einsum("...id,iod->...o", grams, self.grams_basis_weights)
            return self.act(self.norm(y + base))
        x2 = x.reshape(-1, self.in_features)
        y = KAGNFunction.apply(x2, self.base_weights, self.grams_basis_weights, self.beta_weights, self.degree,
                               self.compile, autocast_dtype(x2))
        return self.act(self.norm(y)).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, degree={self.degree}, "
                f"impl={self.impl!r}, compile={self.compile}")


def basis_flops(degree: int) -> int:
    """FLOPs of SiLU(P_0..P_D(tanh x)) for one input value, as published: 1 tanh; 3 per degree d >= 2 (z P_{d-1},
    beta P_{d-2}: two multiplications, one subtraction; beta itself is per layer); 3 per SiLU of each of the
    D + 1 polynomials (x / (1 + exp(-x)): exp, add, divide; P_0 = 1 included, as the published code computes it).
    1 + 3 (D - 1) + 3 (D + 1) = 6 D + 1 = 19 at D = 3. The SiLU base branch and the LayerNorm over the outputs are
    not basis work (as for the other kinds)."""
    d = int(degree)
    return 1 + 3 * max(d - 1, 0) + 3 * (d + 1)


def _params(i: int, o: int, kw) -> int:
    d = int(kw.get("degree", 3))
    return i * o * (d + 2) + d + 1 + 2 * o


KIND = Kind(
    name="kagn", layer=KAGNLayer, title="KAGN (Gram polynomials, torch-conv-kan)",
    formula="y = SiLU(LN(W_b SiLU(x) + sum_{i,d} C[i,o,d] SiLU(P_d(tanh x_i)))),  Gram P_d, degree 3",
    source="IvanDrokin/torch-conv-kan, kans/layers.py, GRAMLayer",
    params=_params, basis_flops=lambda layer: basis_flops(layer.degree),
    hidden="dim", act_keyword="act", act_default=nn.SiLU,
    integer_kwargs=frozenset({"degree"}), activation_kwargs=frozenset({"act"}),
    reinit_after_host=False,  # plain Parameters and a LayerNorm (timm's init leaves LayerNorm at 1 / 0)
    impls=("fast", "reference"), fused="compiled",
    key_markers=(".grams_basis_weights", ".beta_weights", ".base_weights"),
    # LayerNorm over the outputs after the bf16 sum: 2.35% worst gradient error measured under bf16 autocast
    # (tests/test_kind_kagn.py, 5% bound there; gpu-check measured 2.3e-2 on norm.bias).
    bf16_tolerance=5e-2,
    memory=lambda layer: layer.saved_floats_per_row(),
)
