"""B-spline KAN layer in the efficient-kan parameterization.

    y_o = sum_i  w_b[o, i] * act(x_i)  +  sum_i s[o, i] * sum_m c[o, i, m] * B_m(x_i)

`act` is SiLU by default, B_m are the order-k B-spline bases on a per-input knot vector (`grid`), `s` is
the optional standalone spline scaler. With the scaler that is grid_size + spline_order + 2 trainable
numbers per edge (10 for the defaults). References: Liu et al., "KAN: Kolmogorov-Arnold Networks"
(arXiv:2404.19756); efficient-kan (Blealtan) for the parameterization, defaults and state-dict keys.
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kanvision.kinds.bspline import fit as bspline_fit

from kanvision.kinds import init as kan_init
from kanvision.kinds.bspline.basis import b_spline_basis, grid_is_uniform, uniform_basis, uniform_knots
from kanvision.kinds.bspline.dense import activation_kind, dense_tables
from kanvision.kinds.bspline.fast import bspline_kan
from kanvision.kinds.dispatch import kernel_switch
from kanvision.kinds.bspline.local import SplineSpec
from kanvision.kinds.scripting import no_torchscript

__all__ = ["BSplineKAN", "b_spline_basis", "uniform_knots"]



@functools.lru_cache(maxsize=None)
def _spline_moments(grid_size: int, order: int, lo: float, hi: float) -> tuple[float, float]:
    """(E[B^2], E[B'^2]) averaged over the bases, x ~ U(lo, hi) on uniform knots: the same for every layer of a
    model with the same grid, so computed once."""
    points, weights = kan_init.uniform_quadrature(lo, hi)
    knots = uniform_knots(1, grid_size, order, (lo, hi), dtype=torch.float64)
    return kan_init.moments(lambda x: b_spline_basis(x.unsqueeze(1), knots, order), points, weights)


@no_torchscript
class BSplineKAN(nn.Module):
    """KAN layer with a SiLU base branch and per-edge B-spline functions (efficient-kan's KANLinear).

    State-dict keys match efficient-kan: `base_weight` (out, in), `spline_weight` (out, in, G + k),
    `spline_scaler` (out, in) when enabled, buffer `grid` (in, G + 2k + 1). Accepts inputs of shape
    (..., in_features). Non-finite inputs are not hidden: they propagate through the base branch, so the
    outputs of that sample are NaN/inf (as with nn.Linear), and other samples are unaffected.

    `impl="fast"` (default) runs `bspline_fast.BSplineKANFunction` (same function and gradients, no dense basis
    kept for backward; uniform or, after update_grid, non-uniform knots); `impl="reference"` the Cox-de Boor
    autograd path (stores the expanded basis, as efficient-kan); `impl="local"` plain autograd through the local
    polynomial form on uniform knots (`uniform_basis`; Cox-de Boor after update_grid), the cheap path to
    differentiate twice, which the Hessian analysis uses. `compile` (fast path): None (default) compiles the kernels where that works (CPU with a C++
    compiler, CUDA with Triton; a one-time cost of seconds per kernel variant on first use, cached on disk by
    inductor), True asks for it, False keeps the eager kernels; `KANVISION_COMPILE=0` opts out process-wide.
    A variant that fails to compile warns once with the cause and runs eager. On CUDA with Triton, None also runs
    the fused Triton kernels (bspline/triton.py) while the knots are uniform; "triton" asks for them, and the
    strings "auto", "compiled", "eager" name None, True, False (see `kinds.dispatch.kernel_switch`).

    Whether the knots are uniform is kept as Python state (`grid_uniform`), refreshed when the grid changes
    through update_grid, load_state_dict or .to(); after editing `grid` in place by hand, call
    `grid_changed()`. So a forward never reads tensor values on the host, and `torch.compile(model)` traces the
    layer without a graph break.

    `init` picks how reset_parameters fills the weights (formulas and sources in `kan_init`):

    - "default": efficient-kan's published init, unchanged: base weight and scaler kaiming-uniform with
      a = sqrt(5) * scale_base / scale_spline (entries U(+-1/sqrt(in)) at scale 1), spline coefficients the
      minimum-norm fit to U(+-scale_noise / (2 G)) noise at the G + 1 knots of grid_range, so each edge starts as
      SiLU plus a near-zero spline. The base weight is drawn on the layer's device (as it always was).
    - "kaiming_normal", "kaiming_uniform", "orthogonal": the three initializations of the training-scheme
      study (arXiv:2411.05296). They touch the base weight and the spline scaler (both (out, in): the study
      swapped the torch initializer efficient-kan applies to exactly these two), with efficient-kan's
      a = sqrt(5) * scale_base / scale_spline for the kaiming pair (so both have variance 1 / (3 in) at scale 1
      and differ in shape) and gain 1 for orthogonal. The spline coefficients keep the default noise fit:
      the study never changed them. "kaiming_uniform" is the default's distribution (efficient-kan's own
      init is the study's kaiming_uniform), drawn on the CPU like every non-default choice.
    - "lecun", "glorot": the variance-preserving schemes of arXiv:2509.03417. Base weight r ~ N(0, s_r^2) and
      spline coefficients b ~ N(0, s_b^2) from the fan-in (and, for glorot, fan-out) formulas with the
      G + k + 1 terms of an edge sharing the variance; the scaler is set to 1 (the paper's c_ji = 1, so the
      coefficients alone carry the spline's scale). The expectations E[R^2], E[R'^2] (R = base_activation)
      and E[B_m^2], E[B_m'^2] are over x ~ U(grid_range) on the initial uniform knots (the paper's default,
      x ~ U(-1, 1), is the default grid_range), and g is that distribution's standard deviation. lecun gives
      E[y^2] = Var(x) for such inputs; glorot trades some of that for the backward pass. scale_noise,
      scale_base and scale_spline do not apply.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid_size: int = 5,
        spline_order: int = 3,
        scale_noise: float = 0.1,
        scale_base: float = 1.0,
        scale_spline: float = 1.0,
        enable_standalone_scale_spline: bool = True,
        base_activation: type[nn.Module] = nn.SiLU,
        grid_eps: float = 0.02,
        grid_range: Sequence[float] = (-1, 1),
        device=None,
        dtype=None,
        impl: str = "fast",
        compile: bool | str | None = None,
        init: str = "default",
    ):
        super().__init__()
        init = kan_init.check_init("BSplineKAN", init)
        if impl not in ("fast", "reference", "local"):
            raise ValueError(f"BSplineKAN: impl must be 'fast', 'reference' or 'local', got {impl!r}")
        if int(in_features) < 1 or int(out_features) < 1:
            raise ValueError(f"BSplineKAN: in_features and out_features must be >= 1, got {in_features}, {out_features}")
        if int(grid_size) < 1:
            raise ValueError(f"BSplineKAN: grid_size must be >= 1, got {grid_size}")
        if int(spline_order) < 1:
            raise ValueError(f"BSplineKAN: spline_order must be >= 1, got {spline_order} (order 0 is piecewise constant and has no gradient in x)")
        if len(grid_range) != 2 or not float(grid_range[0]) < float(grid_range[1]):
            raise ValueError(f"BSplineKAN: grid_range must be (lo, hi) with lo < hi, got {tuple(grid_range)}")
        if not 0.0 <= float(grid_eps) <= 1.0:
            raise ValueError(f"BSplineKAN: grid_eps must be in [0, 1], got {grid_eps}")
        factory = dict(device=device, dtype=dtype)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.grid_size, self.spline_order = int(grid_size), int(spline_order)
        self.scale_noise, self.scale_base, self.scale_spline = scale_noise, scale_base, scale_spline
        self.enable_standalone_scale_spline = enable_standalone_scale_spline
        self.grid_eps = grid_eps
        self.grid_range = (float(grid_range[0]), float(grid_range[1]))

        self.register_buffer("grid", uniform_knots(self.in_features, self.grid_size, self.spline_order,
                                                   self.grid_range, **factory))
        self.base_weight = nn.Parameter(torch.empty(self.out_features, self.in_features, **factory))
        self.spline_weight = nn.Parameter(
            torch.empty(self.out_features, self.in_features, self.grid_size + self.spline_order, **factory))
        if enable_standalone_scale_spline:
            self.spline_scaler = nn.Parameter(torch.empty(self.out_features, self.in_features, **factory))
        self.base_activation = base_activation()
        self.impl, self.compile = impl, kernel_switch(compile, "BSplineKAN")
        self.init = init
        self._act = activation_kind(self.base_activation)
        self._plan, self._plan_key = None, None
        self.grid_uniform = True  # uniform_knots
        self._grid_version = self.grid._version
        self.register_load_state_dict_post_hook(lambda module, keys: module.grid_changed())
        self.reset_parameters()

    @property
    def num_bases(self) -> int:
        return self.grid_size + self.spline_order

    def reset_parameters(self) -> None:
        """Fill the weights as `init` says (see the class docstring)."""
        if self.base_weight.is_meta:  # shape-only construction (parameter counting): nothing to fill
            return
        if self.init == "default":
            nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5) * self.scale_base)
            with torch.no_grad():
                self.spline_weight.copy_(self._noise_fit())
                if self.enable_standalone_scale_spline:
                    nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5) * self.scale_spline)
            return
        edges = (self.out_features, self.in_features)
        with torch.no_grad():
            if self.init in kan_init.STUDY_INITS:
                self.base_weight.copy_(kan_init.study_draw(self.init, edges, math.sqrt(5) * self.scale_base))
                self.spline_weight.copy_(self._noise_fit())
                if self.enable_standalone_scale_spline:
                    self.spline_scaler.copy_(kan_init.study_draw(self.init, edges, math.sqrt(5) * self.scale_spline))
                return
            std_base, std_spline = self.variance_preserving_stds()
            self.base_weight.copy_(kan_init.normal(edges, std_base))
            self.spline_weight.copy_(kan_init.normal(edges + (self.num_bases,), std_spline))
            if self.enable_standalone_scale_spline:
                self.spline_scaler.fill_(1.0)

    def _noise_fit(self) -> torch.Tensor:
        """efficient-kan's spline init: coefficients (float64, CPU) fitted to small uniform noise."""
        # Noise drawn in float64 on the CPU generator so a seed gives the same layer on every device.
        noise = (torch.rand(self.grid_size + 1, self.in_features, self.out_features, dtype=torch.float64)
                 - 0.5) * self.scale_noise / self.grid_size
        # Minimum-norm fit at the G + 1 knots of grid_range: one small pseudo-inverse for all inputs.
        coeff = bspline_fit.init_coefficients(self.grid.to("cpu"), self.spline_order, noise)
        if not self.enable_standalone_scale_spline:
            coeff = coeff * self.scale_spline
        return coeff

    def variance_preserving_stds(self, init: str | None = None) -> tuple[float, float]:
        """(s_r, s_b): standard deviations of base weight and spline coefficients under "lecun" / "glorot"
        (this layer's `init` unless given), for x ~ U(grid_range) on the initial uniform knots."""
        name = kan_init.check_init("BSplineKAN", self.init if init is None else init)
        lo, hi = self.grid_range
        spline = _spline_moments(self.grid_size, self.spline_order, lo, hi)
        points, weights = kan_init.uniform_quadrature(lo, hi)
        # A float64 CPU copy, so the activation's own parameters (if any) need not be where the layer is.
        act = copy.deepcopy(self.base_activation).to("cpu", torch.float64)
        base = kan_init.moments(lambda x: act(x).unsqueeze(1), points, weights)
        gain = (hi - lo) / math.sqrt(12.0)  # standard deviation of U(lo, hi): the paper's g
        terms = self.num_bases + 1  # the residual and G + k bases share each edge's variance
        return tuple(kan_init.variance_preserving_std(name, self.in_features, self.out_features, terms, *m, gain)
                     for m in (base, spline))

    def _fit_coefficients(self, x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Least-squares coefficients (out, in, G + k) with sum_m c[o,i,m] B_m(x[:, i]) ~= y[:, i, o].

        Minimum-norm where underdetermined; solved in float64 on the layer's device (see bspline_fit).
        update_grid does not use it: it never materialises the (N, in, out) targets.
        """
        coeff = bspline_fit.lstsq_coefficients(x, y, grid, self.spline_order)
        return coeff.to(self.spline_weight.device, self.spline_weight.dtype)

    @property
    def scaled_spline_weight(self) -> torch.Tensor:
        if self.enable_standalone_scale_spline:
            return self.spline_weight * self.spline_scaler.unsqueeze(-1)
        return self.spline_weight

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """Bases (N, in, G + k) of x (N, in) on the current grid (reference Cox-de Boor path)."""
        if x.dim() != 2 or x.size(1) != self.in_features:
            raise ValueError(f"BSplineKAN.b_splines: expected x of shape (N, {self.in_features}), got {tuple(x.shape)}")
        if self.impl == "local" and self.grid_uniform:
            return uniform_basis(x, self.grid, self.spline_order)
        return b_spline_basis(x, self.grid, self.spline_order)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.size(-1) != self.in_features:
            raise ValueError(
                f"BSplineKAN: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}; "
                "for channels-first (B, C, H, W) tensors wrap the layer in kanvision.layers.ChannelsFirst")

    def grid_changed(self) -> None:
        """Re-derive `grid_uniform` (and the kernels' tables) from the current knots, on the host.

        Called by update_grid, load_state_dict and .to(); call it after writing `grid` in place yourself."""
        g = self.grid
        if not g.is_meta:  # meta tensors have no values: keep what the constructor or last update said
            self.grid_uniform = grid_is_uniform(g)
        self._plan, self._plan_key = None, None
        self._grid_version = g._version

    def _apply(self, fn, recurse=True):
        # .double() of float32 knots is only uniform to float32 precision: re-check at the new dtype.
        out = super()._apply(fn, recurse)
        self.grid_changed()
        return out

    def fast_spec(self) -> SplineSpec:
        """The eager kernels' tables for the current knots, rebuilt only when `grid` changed."""
        g = self.grid
        key = (g.data_ptr(), g._version, g.dtype, g.device, self.grid_uniform)
        if self._plan_key != key:
            # Outside inference mode: tables first built during validation are saved for backward in training.
            with torch.inference_mode(False):
                self._plan = SplineSpec(g.detach(), self.spline_order, self.grid_uniform)
            self._plan_key = key
        return self._plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        if self.impl == "fast":
            if torch.compiler.is_compiling() or x.device.type == "meta":
                # Traced (or shape-only): tables as graph ops from the knots, no cached host objects.
                spec, (ta, tb) = None, dense_tables(self.grid, self.spline_order, self.grid_uniform)
            else:
                if self.grid._version != self._grid_version:  # knots edited in place since the last look
                    self.grid_changed()
                spec = self.fast_spec()
                ta, tb = spec.dense
            module = self.base_activation if self._act == "module" else None
            y = bspline_kan(x, self.base_weight, self.spline_weight, getattr(self, "spline_scaler", None), self.grid,
                            ta, tb, self.spline_order, self.grid_uniform, self._act, self.compile, spec, module)
            return y.reshape(*lead, self.out_features)
        base = F.linear(self.base_activation(x), self.base_weight)
        spline = F.linear(self.b_splines(x).reshape(x.size(0), -1),
                          self.scaled_spline_weight.reshape(self.out_features, -1))
        return (base + spline).reshape(*lead, self.out_features)

    def spline_output(self, x: torch.Tensor) -> torch.Tensor:
        """The spline branch alone, (N, out): what update_grid must preserve."""
        x = x.reshape(-1, self.in_features)
        return F.linear(self.b_splines(x).reshape(x.size(0), -1),
                        self.scaled_spline_weight.reshape(self.out_features, -1))

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, margin: float = 0.01) -> None:
        """Fit the grid to the distribution of x and refit the splines so the function barely changes.

        New knots: a grid_eps mix of uniform knots over [min - margin, max + margin] and sample quantiles
        (KAN paper, sec. 2.5). The coefficients are refit by least squares to each edge's *unscaled*
        spline values, so that applying `spline_scaler` afterwards reproduces the old function. (The
        published efficient-kan refits the scaled values and then scales again, shrinking the spline part.)
        The refit is one (G + k) x (G + k) projection per input (bspline_fit.refit_projection): memory
        O(N x in x (G + k)), float64 on the layer's device.
        """
        self.set_grid(*self.fitted_grid(bspline_fit.check_update_rows(self, x), margin))

    @torch.no_grad()
    def fitted_grid(self, x: torch.Tensor, margin: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
        """(knots, coefficients) update_grid would install for rows x (N, in) already checked by
        bspline_fit.check_update_rows; contiguous, so they can be sent by a collective as they are."""
        grid = bspline_fit.new_knots(x, self.grid_size, self.spline_order, self.grid_eps, margin).to(self.grid.dtype)
        coeff = bspline_fit.refit_coefficients(x, self.grid, grid, self.spline_order, self.spline_weight)
        return grid.contiguous(), coeff.contiguous()

    # Edge protocol (kanvision.analysis.splines): phi_{o,i}(x) = w_base[o,i] act(x) + sum_m c[o,i,m] s[o,i] B_m(x).
    edge_xlabel = "input x_i"

    def edge_inputs(self, rows: torch.Tensor) -> torch.Tensor:
        return rows

    def edge_values(self, u: torch.Tensor) -> torch.Tensor:
        """phi_{o,i}(u[:, i]) for every edge: (N, out, in)."""
        spline = torch.einsum("nim,oim->noi", self.b_splines(u), self.scaled_spline_weight)
        return spline + self.base_weight[None] * self.base_activation(u)[:, None, :]

    def edge_knots(self, i: int) -> torch.Tensor:
        return self.grid[i]

    def edge_range(self, i: int) -> tuple[float, float]:
        """The knots inside which the bases sum to one."""
        knots = self.grid[i]
        return float(knots[self.spline_order]), float(knots[-self.spline_order - 1])

    def check_update_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x as (N, in) if a grid update can use it, else ValueError (grid-update protocol of kanvision.train)."""
        return bspline_fit.check_update_rows(self, x)

    def empty_grid_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Uninitialised (grid, coeff) of this layer's shapes: the receive buffers of a grid broadcast."""
        return torch.empty_like(self.grid), torch.empty_like(self.spline_weight)

    @torch.no_grad()
    def set_grid(self, grid: torch.Tensor, coeff: torch.Tensor) -> None:
        """Install knots and coefficients in place (the version counters change) and re-derive grid_uniform."""
        self.grid.copy_(grid)
        self.spline_weight.copy_(coeff)
        self.grid_changed()

    def regularization_loss(self, x: torch.Tensor | None = None, regularize_activation: float = 1.0,
                            regularize_entropy: float = 1.0) -> torch.Tensor:
        """KAN-paper sparsity regularizer: L1 of per-edge mean |activation| plus the entropy of its share.

        With `x`, the activations are the true per-edge spline outputs on that batch (KAN paper eq. 2.17-2.19,
        costs an (N, in, out) tensor). Without it, efficient-kan's cheap proxy: mean |coefficient| per edge.
        """
        if x is None:
            l1 = self.spline_weight.abs().mean(-1)
        else:
            self._check_input(x)
            x = x.reshape(-1, self.in_features)
            phi = torch.einsum("nim,oim->nio", self.b_splines(x), self.scaled_spline_weight)
            l1 = phi.abs().mean(0).T  # (out, in)
        total = l1.sum()
        p = l1 / total.clamp_min(torch.finfo(l1.dtype).tiny)
        entropy = -torch.sum(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)))
        return regularize_activation * total + regularize_entropy * entropy

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, grid_size={self.grid_size}, "
                f"spline_order={self.spline_order}, grid_range={self.grid_range}, "
                f"standalone_scale_spline={self.enable_standalone_scale_spline}, impl={self.impl!r}, "
                f"compile={self.compile}" + ("" if self.init == "default" else f", init={self.init!r}"))
