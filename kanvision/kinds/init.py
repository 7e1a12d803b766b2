"""Initialization choices shared by the KAN layers (`init=` on BSplineKAN and RSWAFKAN).

Two families, each from a paper that studied KAN initialization:

- The three schemes of the training-scheme study "On Training of Kolmogorov-Arnold Networks" (Sohail 2024,
  arXiv:2411.05296): `kaiming_normal`, `kaiming_uniform`, `orthogonal`. The study ran efficient-kan's layer and
  swapped the torch initializer it applies to the base weight and the spline scaler, called the way
  efficient-kan calls it, `init(w, a=sqrt(5) * scale)`, falling back to `init(w)` for initializers without an
  `a` (orthogonal). The spline coefficients keep their small-noise fit. (Read from the author's experiment
  code, github.com/ShairozS/HSIC_Bottleneck-Pytorch: Experiments/mnist_experiments.py loops over
  `[orthogonal_, kaiming_normal_, kaiming_uniform_]` and Code/Models/_kan.py applies them; the paper's own
  text past its introduction was not reachable from here.)
- The variance-preserving schemes of "Initialization Schemes for Kolmogorov-Arnold Networks: An Empirical
  Study" (Rigas, Verma, Alexandridis, Wang 2025, arXiv:2509.03417): `lecun` and `glorot`. For a layer
  y_j = sum_i r_ji R(x_i) + c_ji sum_m b_jim B_m(x_i) with c = 1, and assuming independent terms that share the
  variance equally among the T terms of each edge (T = G + k + 1: the residual and the G + k bases),
      LeCun-inspired:  s_r^2 = g^2 / (n_in T E[R^2]),     s_b^2 = g^2 / (n_in T E[B^2])
      Glorot-inspired: s_r^2 = 2 g^2 / (n_in T E[R^2] + n_out T E[R'^2]),
                       s_b^2 = 2 g^2 / (n_in T E[B^2] + n_out T E[B'^2])
  with r ~ N(0, s_r^2), b ~ N(0, s_b^2), g the standard deviation of the input distribution, and E[B^2],
  E[B'^2] averaged over the bases m. The expectations are over an assumed input distribution (the paper's
  default: x uniform on [-1, 1]; its code also offers N(0, 1)). LeCun keeps the forward second moment:
  E[y^2] = n_in (s_r^2 E[R^2] + (G + k) s_b^2 E[B^2]) = g^2. Glorot is the harmonic compromise between that
  and the same condition on the backward pass (derivatives, fan-out). Formulas as the authors' reference
  implementation computes them (jaxKAN, layers/Spline.py, init types "lecun" and "glorot").

Every choice but "default" draws its random numbers on the CPU in float64 and then casts, so a seed gives the
same layer on every device and dtype. The expectations are computed by quadrature, not by sampling (the
paper's code averages 1e4 random samples), so they use no random numbers.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["INIT_CHOICES", "VARIANCE_PRESERVING", "STUDY_INITS", "check_init", "kaiming_gain", "moments",
           "normal_quadrature", "uniform_quadrature", "study_draw", "normal", "variance_preserving_std"]

STUDY_INITS = ("kaiming_normal", "kaiming_uniform", "orthogonal")  # arXiv:2411.05296
VARIANCE_PRESERVING = ("lecun", "glorot")  # arXiv:2509.03417
INIT_CHOICES = ("default",) + STUDY_INITS + VARIANCE_PRESERVING

# Quadrature nodes: the integrands are smooth (SiLU, tanh bumps) or piecewise polynomials (B-splines), so a
# midpoint rule on this many nodes is within ~1e-8 relative of scipy's adaptive quadrature (measured for
# orders 1-3 and the defaults of both layers), far below the sampling noise of the weights it sets; 2e4
# float64 values cost nothing.
QUADRATURE_NODES = 20_001
# N(0, 1) is integrated on [-NORMAL_RANGE, NORMAL_RANGE]: the mass left outside (2e-23) is below float64 noise.
NORMAL_RANGE = 10.0


def check_init(owner: str, init) -> str:
    """The canonical name of an init choice, or ValueError listing the choices."""
    name = init.strip().lower() if isinstance(init, str) else init
    if name not in INIT_CHOICES:
        raise ValueError(f"{owner}: init must be one of {', '.join(map(repr, INIT_CHOICES))}, got {init!r}")
    return name


def kaiming_gain(a: float) -> float:
    """torch's leaky_relu gain for negative slope a: sqrt(2 / (1 + a^2)); a = sqrt(5) gives 1/sqrt(3)."""
    return math.sqrt(2.0 / (1.0 + a * a))


def study_draw(name: str, shape: tuple[int, int], a: float) -> torch.Tensor:
    """A (rows, fan_in) matrix from one of the study's initializers, float64 on the CPU.

    kaiming_normal: N(0, gain(a)^2 / fan_in); kaiming_uniform: U(-b, b), b = sqrt(3) gain(a) / sqrt(fan_in)
    (the same variance); orthogonal: torch's orthogonal_ with gain 1 (it takes no `a`, so the study's call
    fell back to the plain one): rows or columns orthonormal, entries of size ~1/sqrt(max(shape)).
    """
    out = torch.empty(shape, dtype=torch.float64)
    fan_in = shape[1]
    if name == "kaiming_normal":
        return out.normal_(0.0, kaiming_gain(a) / math.sqrt(fan_in))
    if name == "kaiming_uniform":
        bound = math.sqrt(3.0) * kaiming_gain(a) / math.sqrt(fan_in)
        return out.uniform_(-bound, bound)
    if name == "orthogonal":
        return torch.nn.init.orthogonal_(out)
    raise ValueError(f"study_draw: {name!r} is not one of {STUDY_INITS}")


def normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
    """N(0, std^2) samples, float64 on the CPU."""
    return torch.empty(shape, dtype=torch.float64).normal_(0.0, std)


def uniform_quadrature(lo: float, hi: float, nodes: int = QUADRATURE_NODES) -> tuple[torch.Tensor, torch.Tensor]:
    """(points, weights) of the midpoint rule for the expectation under x ~ U(lo, hi)."""
    step = (hi - lo) / nodes
    points = lo + step * (torch.arange(nodes, dtype=torch.float64) + 0.5)
    return points, torch.full((nodes,), 1.0 / nodes, dtype=torch.float64)


def normal_quadrature(nodes: int = QUADRATURE_NODES) -> tuple[torch.Tensor, torch.Tensor]:
    """(points, weights) for the expectation under x ~ N(0, 1): midpoint rule on the density."""
    points, _ = uniform_quadrature(-NORMAL_RANGE, NORMAL_RANGE, nodes)
    density = torch.exp(-0.5 * points * points)
    return points, density / density.sum()


def moments(fn: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
            weights: torch.Tensor) -> tuple[float, float]:
    """(E[f^2], E[f'^2]) for fn: (N,) -> (N, M) (M functions of one variable), averaged over the M functions.

    The derivative comes from forward-mode AD in one pass (each output depends on its own x only).
    """
    values, slopes = torch.func.jvp(fn, (points,), (torch.ones_like(points),))
    values, slopes = values.reshape(points.numel(), -1), slopes.reshape(points.numel(), -1)
    second = (weights.unsqueeze(1) * values.square()).sum(0).mean()
    slope_second = (weights.unsqueeze(1) * slopes.square()).sum(0).mean()
    return float(second), float(slope_second)


def variance_preserving_std(name: str, n_in: int, n_out: int, terms: int, second: float, slope_second: float,
                            gain: float) -> float:
    """The standard deviation of one weight family (arXiv:2509.03417; see the module docstring)."""
    if name == "lecun":
        return gain / math.sqrt(n_in * terms * second)
    if name == "glorot":
        return gain * math.sqrt(2.0 / (n_in * terms * second + n_out * terms * slope_second))
    raise ValueError(f"variance_preserving_std: {name!r} is not one of {VARIANCE_PRESERVING}")
