"""B-spline KAN (efficient-kan's KANLinear): the layer, its basis, kernels and grid fit, and its registry record."""
from torch import nn

from kanvision.kinds.bspline.basis import b_spline_basis, uniform_knots
from kanvision.kinds.bspline.fast import BSplineKANFunction
from kanvision.kinds.bspline.layer import BSplineKAN
from kanvision.kinds.registry import Kind

__all__ = ["BSplineKAN", "BSplineKANFunction", "KIND", "b_spline_basis", "basis_flops", "uniform_knots"]


def basis_flops(grid_size: int, spline_order: int) -> int:
    """FLOPs of the Cox-de Boor recursion for one input value, as efficient-kan evaluates it on the G + 2k + 1
    extended knots: order 0, G + 2k indicators of 2 comparisons each; order p = 1..k, G + 2k - p bases of 7 FLOPs
    (2 subtractions involving x, 2 divisions by knot differences, 2 multiplications, 1 addition; the knot
    differences depend on the layer only). 211 for G = 5, k = 3. Our kernels compute only the k + 1 non-zero bases,
    so this is the published algorithm's cost, not a measurement of ours. (KANbeFair, arXiv:2407.16674, counts the
    recursion per edge because pykan evaluates it per edge; efficient-kan shares the bases across the outputs.)"""
    g, k = int(grid_size), int(spline_order)
    return 2 * (g + 2 * k) + 7 * sum(g + 2 * k - p for p in range(1, k + 1))


def _params(i: int, o: int, kw) -> int:
    g, k = int(kw.get("grid_size", 5)), int(kw.get("spline_order", 3))
    scaler = 1 if kw.get("enable_standalone_scale_spline", True) else 0
    return i * o * (g + k + 1 + scaler)  # base weight + G + k coefficients (+ standalone scaler) per edge


KIND = Kind(
    name="bspline", layer=BSplineKAN, title="B-spline (efficient-kan)",
    formula="y = SiLU(x) W_b^T + sum_{i,m} c[o,i,m] s[o,i] B_m(x_i)  (cubic B-splines, G=5 on [-1, 1])",
    source="Blealtan/efficient-kan, src/efficient_kan/kan.py, KANLinear",
    params=_params, basis_flops=lambda layer: basis_flops(layer.grid_size, layer.spline_order),
    act_keyword="base_activation", act_default=nn.SiLU,
    init_choices=("default", "kaiming_normal", "kaiming_uniform", "orthogonal", "lecun", "glorot"),
    integer_kwargs=frozenset({"grid_size", "spline_order"}), activation_kwargs=frozenset({"base_activation"}),
    grid_update=True, impls=("fast", "reference"), hvp_impl="local", fused="triton", sample_range=(-1.2, 1.2),
    key_markers=(".spline_weight", ".base_weight"),
    memory=lambda layer: layer.in_features,  # the fast kernel saves x only and rebuilds the basis in backward
)
