"""RSWAF KAN (Vision-KAN's FasterKAN layer): the layer, its basis and kernels, and its registry record."""
from kanvision.kinds.registry import Kind
from kanvision.kinds.rswaf.basis import rswaf_basis
from kanvision.kinds.rswaf.fast import RSWAFKANFunction
from kanvision.kinds.rswaf.layer import RSWAFBasis, RSWAFKAN

__all__ = ["KIND", "RSWAFBasis", "RSWAFKAN", "RSWAFKANFunction", "basis_flops", "rswaf_basis"]


def basis_flops(num_grids: int) -> int:
    """FLOPs of b_j(u) = 1 - tanh((u - u_j) / h)^2 over all centres for one input value: 5 per centre (subtract,
    divide by h, tanh, square, subtract from 1); 40 for the default 8 centres."""
    return 5 * int(num_grids)


KIND = Kind(
    name="rswaf", layer=RSWAFKAN, title="RSWAF (Vision-KAN / faster-kan)",
    formula="y = W flatten_j(1 - tanh((LN(x) - u_j)/h)^2),  8 centres on [-2, 2], h = 0.33",
    source="chenziwenhaoshuai/Vision-KAN, fasterkan.py (its copy of AthanasiosDelis/faster-kan), FasterKANLayer",
    params=lambda i, o, kw: 2 * i + int(kw.get("num_grids", 8)) * i * o
    + (int(kw.get("num_grids", 8)) if kw.get("train_grid") else 0) + (1 if kw.get("train_denominator") else 0),
    basis_flops=lambda layer: basis_flops(layer.num_grids),
    init_choices=("default", "kaiming_normal", "kaiming_uniform", "orthogonal", "lecun", "glorot"),
    integer_kwargs=frozenset({"num_grids"}), reinit_after_host=True, impls=("fast", "reference"), hvp_impl="reference", fused="triton",
    key_markers=(".spline_linear.weight", ".rbf.grid", ".layernorm.weight"),
    # The fast kernel saves x and LayerNorm's output (the basis is rebuilt in backward) and LayerNorm's mean and
    # 1/std per row.
    memory=lambda layer: 2 * layer.in_features + 2,
)
