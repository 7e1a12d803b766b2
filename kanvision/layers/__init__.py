"""KAN layers: B-spline (efficient-kan parameterization), RSWAF (Vision-KAN), and the timm Mlp drop-in."""
from .bspline import BSplineKAN
from .bspline_basis import b_spline_basis, uniform_knots
from .kan_mlp import KAN_KINDS, ChannelsFirst, KanMlp, kan_layer_class, kan_mlp_layer, normalize_kan_kind
from .bspline_fast import BSplineKANFunction
from .rswaf import RSWAFKAN, RSWAFBasis
from .rswaf_basis import rswaf_basis
from .rswaf_fast import RSWAFKANFunction
from .compile import compile_failures
from .scripting import TorchScriptUnsupported
from .workspace import release_scratch

__all__ = [
    "BSplineKAN", "b_spline_basis", "uniform_knots",
    "RSWAFKAN", "RSWAFBasis", "rswaf_basis",
    "BSplineKANFunction", "RSWAFKANFunction", "release_scratch", "compile_failures", "TorchScriptUnsupported",
    "KAN_KINDS", "ChannelsFirst", "KanMlp", "kan_layer_class", "kan_mlp_layer", "normalize_kan_kind",
]
