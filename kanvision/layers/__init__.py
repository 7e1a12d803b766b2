"""What every KAN kind shares: the timm Mlp drop-in (KanMlp), the MLP init choices, and, so that existing imports
keep working, the layer classes of the built-in kinds (they live in kanvision.kinds)."""
from kanvision.kinds.bspline import BSplineKAN, BSplineKANFunction, b_spline_basis, uniform_knots
from kanvision.kinds.compile import compile_failures
from kanvision.kinds.rswaf import RSWAFBasis, RSWAFKAN, RSWAFKANFunction, rswaf_basis
from kanvision.kinds.scripting import TorchScriptUnsupported
from kanvision.kinds.workspace import release_scratch
from kanvision.layers.kan_mlp import ChannelsFirst, KanMlp, kan_layer_class, kan_mlp_layer, normalize_kan_kind

__all__ = [
    "BSplineKAN", "b_spline_basis", "uniform_knots",
    "RSWAFKAN", "RSWAFBasis", "rswaf_basis",
    "BSplineKANFunction", "RSWAFKANFunction", "release_scratch", "compile_failures", "TorchScriptUnsupported",
    "KAN_KINDS", "ChannelsFirst", "KanMlp", "kan_layer_class", "kan_mlp_layer", "normalize_kan_kind",
]


def __getattr__(name: str):
    if name == "KAN_KINDS":  # "none" and every registered kind (plug-ins register at run time)
        from kanvision.kinds import available_kinds
        return available_kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
