"""RSWAF KAN layer (reflectional switch activation functions), as the Vision-KAN paper ran it.

    y = W . flatten_j( b_j(LayerNorm(x)) ),   b_j(u) = 1 - tanh((u - u_j) / h)^2

with num_grids centres u_j evenly on [grid_min, grid_max] and width h (`denominator`). No base branch,
no bias: 2*in + num_grids*in*out trainable parameters. References: faster-kan (Athanasios Delis) for the
basis; Vision-KAN (Chen et al.) for LayerNorm -> basis -> xavier-initialised linear and the defaults
(8 centres on [-2, 2], h = 0.33). Unlike the current faster-kan, h is used in the forward pass too, so
the analytic gradient is the gradient of the function that is computed.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from kanvision.kinds import init as kan_init
from kanvision.kinds.rswaf.basis import rswaf_basis
from kanvision.kinds.dispatch import kernel_switch
from kanvision.kinds.rswaf.fast import rswaf_kan
from kanvision.kinds.scripting import no_torchscript

__all__ = ["RSWAFBasis", "RSWAFKAN", "rswaf_basis"]


class RSWAFBasis(nn.Module):
    """The basis with its centres (`grid`) and width; each a buffer unless made trainable."""

    def __init__(self, grid_min: float = -2.0, grid_max: float = 2.0, num_grids: int = 8,
                 denominator: float = 0.33, train_grid: bool = False, train_denominator: bool = False,
                 device=None, dtype=None):
        super().__init__()
        if int(num_grids) < 1:
            raise ValueError(f"RSWAFKAN: num_grids must be >= 1, got {num_grids}")
        if not float(grid_min) < float(grid_max) and int(num_grids) > 1:
            raise ValueError(f"RSWAFKAN: need grid_min < grid_max, got {grid_min}, {grid_max}")
        if not float(denominator) > 0:
            raise ValueError(f"RSWAFKAN: denominator (h) must be > 0, got {denominator}")
        factory = dict(device=device, dtype=dtype)
        # The constructor's values, kept as Python numbers: the variance-preserving inits compute their
        # expectations from these in float64, so they agree on every device and dtype.
        self.initial = (float(grid_min), float(grid_max), int(num_grids), float(denominator))
        grid = torch.linspace(float(grid_min), float(grid_max), int(num_grids), **factory)
        h = torch.tensor(float(denominator), **factory)
        if train_grid:
            self.grid = nn.Parameter(grid)
        else:
            self.register_buffer("grid", grid)
        if train_denominator:
            self.denominator = nn.Parameter(h)
        else:
            # A constructor argument, so not persisted: reference state dicts have no such key.
            self.register_buffer("denominator", h, persistent=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return rswaf_basis(u, self.grid, self.denominator)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # faster-kan / Vision-KAN store 1/h as `inv_denominator`; read it as the h it stands for.
        inv = state_dict.pop(prefix + "inv_denominator", None)
        if inv is not None:
            key = prefix + "denominator"
            if isinstance(self.denominator, nn.Parameter):
                state_dict.setdefault(key, 1.0 / inv)
            else:
                with torch.no_grad():
                    self.denominator.copy_(1.0 / inv)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@functools.lru_cache(maxsize=None)
def _basis_moments(grid_min: float, grid_max: float, num_grids: int, width: float) -> tuple[float, float]:
    """(E[b^2], E[b'^2]) averaged over the centres, u ~ N(0, 1): computed once per basis configuration."""
    centres = torch.linspace(grid_min, grid_max, num_grids, dtype=torch.float64)
    points, weights = kan_init.normal_quadrature()
    return kan_init.moments(lambda u: rswaf_basis(u, centres, width), points, weights)


@no_torchscript
class RSWAFKAN(nn.Module):
    """LayerNorm(in) -> RSWAF basis (in x num_grids) -> Linear(in*num_grids -> out, no bias).

    State-dict keys match Vision-KAN's FasterKANLayer: `layernorm.weight`, `layernorm.bias`,
    `spline_linear.weight` (out, in*num_grids; column i*num_grids + j is input i, centre j), `rbf.grid`.
    Non-finite inputs propagate through the LayerNorm to every output of that sample (NaN), never hidden.
    `impl`: None (default) = "fast" (`rswaf_fast.RSWAFKANFunction`, basis rebuilt in backward) unless the
    centres or width are trainable, then "reference" (plain autograd). `compile`: None (default) compiles the
    fast kernels where that works (on CUDA with Triton: the fused kernels of rswaf/triton.py), True asks for
    compiled, False keeps them eager, "triton" asks for the fused kernels (see BSplineKAN).

    `init` (formulas and sources in `kan_init`; the LayerNorm always starts as weight 1, bias 0, and the
    centres and width are hyper-parameters, so every choice touches `spline_linear.weight` only, the one
    tensor that plays the part of both the base weight and the spline coefficients here):

    - "default": xavier-uniform, as Vision-KAN initialises it (unchanged, drawn on the layer's device).
    - "kaiming_normal", "kaiming_uniform", "orthogonal": the training-scheme study's initializers
      (arXiv:2411.05296) called as the study called them on efficient-kan's weights, with a = sqrt(5) (scale 1:
      there is no scale_base) and fan_in = in * num_grids. kaiming_uniform is then nn.Linear's own init,
      U(+-1/sqrt(fan_in)); kaiming_normal has the same variance 1 / (3 fan_in); orthogonal has gain 1.
    - "lecun", "glorot": arXiv:2509.03417's variance-preserving formulas with no residual branch, so the
      variance is shared among the num_grids basis terms of each edge: w ~ N(0, s^2) with
      s^2 = 1 / (in * num_grids * E[b^2]) (lecun) or 2 / (in * num_grids * E[b^2] + out * num_grids * E[b'^2])
      (glorot), E[.] averaged over the centres. The basis sees u = LayerNorm(x), standardised whatever x is,
      so the expectations are over u ~ N(0, 1) (the paper's "normal" option) and the gain is 1: lecun gives
      outputs with E[y^2] = 1 for any input distribution.
    """

    def __init__(self, in_features: int, out_features: int, grid_min: float = -2.0, grid_max: float = 2.0,
                 num_grids: int = 8, denominator: float = 0.33, train_grid: bool = False,
                 train_denominator: bool = False, device=None, dtype=None, impl: str | None = None,
                 compile: bool | str | None = None, init: str = "default"):
        super().__init__()
        self.init = kan_init.check_init("RSWAFKAN", init)
        if int(in_features) < 1 or int(out_features) < 1:
            raise ValueError(f"RSWAFKAN: in_features and out_features must be >= 1, got {in_features}, {out_features}")
        trainable_basis = bool(train_grid or train_denominator)
        if impl is None:  # the fast kernel treats centres and width as constants
            impl = "reference" if trainable_basis else "fast"
        if impl not in ("fast", "reference"):
            raise ValueError(f"RSWAFKAN: impl must be 'fast' or 'reference' (or None for automatic), got {impl!r}")
        if impl == "fast" and trainable_basis:
            raise ValueError("RSWAFKAN: impl='fast' needs fixed centres and width; with train_grid/train_denominator "
                             "use impl='reference' (or leave impl unset)")
        self.impl, self.compile = impl, kernel_switch(compile, "RSWAFKAN")
        factory = dict(device=device, dtype=dtype)
        self.in_features, self.out_features, self.num_grids = int(in_features), int(out_features), int(num_grids)
        self.layernorm = nn.LayerNorm(self.in_features, **factory)
        self.rbf = RSWAFBasis(grid_min, grid_max, num_grids, denominator, train_grid, train_denominator, **factory)
        shape = (self.in_features * self.num_grids, self.out_features)
        if self.init == "default":
            self.spline_linear = nn.Linear(*shape, bias=False, **factory)
        else:
            # Without nn.Linear's own draw: made where the layer lives, it would advance the CPU generator on
            # the CPU only, so the CPU draws of reset_parameters would differ between devices.
            self.spline_linear = nn.Linear(*shape, bias=False, device="meta", dtype=dtype).to_empty(
                device=torch.get_default_device() if device is None else device)
        self.reset_parameters()

    @property
    def fast_supported(self) -> bool:
        """impl 'fast' treats the centres and width as constants: not with train_grid / train_denominator."""
        return not any(isinstance(t, nn.Parameter) for t in (self.rbf.grid, self.rbf.denominator))

    def reset_parameters(self) -> None:
        """LayerNorm to identity, `spline_linear.weight` as `init` says (see the class docstring)."""
        self.layernorm.reset_parameters()
        weight = self.spline_linear.weight
        if weight.is_meta:  # shape-only construction: nothing to fill
            return
        if self.init == "default":
            nn.init.xavier_uniform_(weight)
            return
        with torch.no_grad():
            if self.init in kan_init.STUDY_INITS:
                weight.copy_(kan_init.study_draw(self.init, tuple(weight.shape), math.sqrt(5)))
            else:
                weight.copy_(kan_init.normal(tuple(weight.shape), self.variance_preserving_std()))

    def variance_preserving_std(self, init: str | None = None) -> float:
        """s for "lecun" / "glorot" (this layer's `init` unless given): u ~ N(0, 1), the constructor's centres
        and width (float64 from the hyper-parameters, not the buffers: the same value on every device)."""
        name = kan_init.check_init("RSWAFKAN", self.init if init is None else init)
        second, slope_second = _basis_moments(*self.rbf.initial)
        return kan_init.variance_preserving_std(name, self.in_features, self.out_features, self.num_grids,
                                                second, slope_second, gain=1.0)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.size(-1) != self.in_features:
            raise ValueError(
                f"RSWAFKAN: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}; "
                "for channels-first (B, C, H, W) tensors wrap the layer in kanvision.layers.ChannelsFirst")

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened basis (..., in*num_grids) of the normalised input."""
        b = self.rbf(self.layernorm(x))
        return b.reshape(*x.shape[:-1], self.in_features * self.num_grids)

    # Edge protocol (kanvision.analysis.splines): phi_{o,i}(u) = sum_j W[o, i*J + j] b_j(u), u = LayerNorm(x)_i.
    # LayerNorm mixes the inputs, so the functions are of the normalised input, not of x_i.
    edge_xlabel = "normalised input LayerNorm(x)_i"

    def edge_inputs(self, rows: torch.Tensor) -> torch.Tensor:
        return self.layernorm(rows)

    def edge_values(self, u: torch.Tensor) -> torch.Tensor:
        """phi_{o,i}(u[:, i]) for every edge: (N, out, in)."""
        w = self.spline_linear.weight.view(self.out_features, self.in_features, self.num_grids)
        return torch.einsum("nij,oij->noi", self.rbf(u), w)

    def edge_knots(self, i: int) -> torch.Tensor:
        return self.rbf.grid

    def edge_range(self, i: int) -> tuple[float, float]:
        return float(self.rbf.grid.min()), float(self.rbf.grid.max())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.impl == "fast":
            u = self.layernorm(x).reshape(-1, self.in_features)
            y = rswaf_kan(u, self.spline_linear.weight, self.rbf.grid, self.rbf.denominator, self.compile)
            return y.reshape(*x.shape[:-1], self.out_features)
        return self.spline_linear(self.basis(x))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, num_grids={self.num_grids}, "
                f"impl={self.impl!r}, compile={self.compile}"
                + ("" if self.init == "default" else f", init={self.init!r}"))
