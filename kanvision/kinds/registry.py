"""The KAN kind registry: one record per kind, one line per kind in `KINDS` below.

A kind is one module of `kanvision.kinds` (its layer, basis, kernels) that defines a `KIND = Kind(...)` record,
plus one line in `KINDS`. Everything the rest of kanvision asks of a kind (layer class and defaults, the hidden
width of its MLP, parameter and FLOP formulas, the analysis' memory model, init choices, grid update, fused
kernel, how to recognise its weights in a state dict) is read from the record, so no other module names a kind.

Users add kinds without editing kanvision, either by calling `register_kind(Kind(...))` or from their own package
through the entry-point group `kanvision.kinds` (value: `package.module:KIND`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

__all__ = ["Kind", "KINDS", "NONE", "available_kinds", "get_kind", "kan_layer_class", "kind_names",
           "normalize_kan_kind", "register_kind", "kind_of_layer", "kan_layer_types", "is_kan_layer"]

NONE = "none"  # timm's own MLP: not a kind, the baseline every kind is compared with
ENTRY_POINT_GROUP = "kanvision.kinds"

# name -> "module:attribute" of its Kind record, imported on first use (one line per kind).
KINDS: dict[str, str] = {
    "bspline": "kanvision.kinds.bspline:KIND",
    "rswaf": "kanvision.kinds.rswaf:KIND",
    "grkan": "kanvision.kinds.grkan:KIND",
    "fastkan": "kanvision.kinds.fastkan:KIND",
    "chebykan": "kanvision.kinds.chebykan:KIND",
    "kagn": "kanvision.kinds.kagn:KIND",
}


@dataclass(frozen=True)
class Kind:
    """Everything kanvision needs to know about one KAN kind.

    name: the `kan=` value. layer: the layer class, `layer(in_features, out_features, **defaults, **kwargs,
    device=, dtype=)`. params(in_features, out_features, kwargs) -> trainable parameters of one layer (the
    published formula; a test checks it against the built layer for every kind). basis_flops(layer) -> FLOPs of
    the elementwise basis work per input value (matrix products are counted by torch's FlopCounterMode).
    """

    name: str
    layer: type[nn.Module]
    title: str  # display name, e.g. "B-spline (efficient-kan)"
    formula: str  # one line, for `kanvision kinds` and the docs
    source: str  # the published code this kind is exact to: repository, file, class
    params: Callable[[int, int, Mapping[str, Any]], int]
    basis_flops: Callable[[nn.Module], int]
    defaults: Mapping[str, Any] = field(default_factory=dict)  # layer keywords the zoo passes unless overridden
    # The MLP a block gets: None = KanMlp (two layers of this kind, in -> hidden -> out); else a class taking
    # timm's Mlp arguments (GR-KAN: rational -> Linear -> rational -> Linear in KAT's key layout).
    mlp: Callable[..., nn.Module] | None = None
    # Hidden width of that MLP when the user gives none: "dim" (in_features: the KAN papers' choice) or "mlp"
    # (the host block's own MLP width, e.g. 4 dim in DeiT: KAT's choice).
    hidden: str = "dim"
    # The host block's act_layer becomes this layer keyword (B-spline's base branch) unless given; None: unused.
    act_keyword: str | None = None
    act_default: type[nn.Module] | None = None  # ... and the value the zoo passes when the block gives none
    init_choices: tuple[str, ...] = ("default",)
    integer_kwargs: frozenset[str] = frozenset()  # keywords that count something (3.0 ok, 3.7 refused)
    # Layer keywords that name an nn.Module class; YAML gives them as strings ("silu").
    activation_kwargs: frozenset[str] = frozenset()
    # The host model's init pass (timm's trunc_normal on every nn.Linear) overwrites parts of this layer: call
    # its reset_parameters() after model construction to restore the published init.
    reinit_after_host: bool = False
    grid_update: bool = False  # layer has update_grid(x) (kanvision.train grid-update callback)
    match_params: bool = True  # an MLP can be sized to this kind's parameter count
    impls: tuple[str, ...] = ()  # storage modes set_kan_impl may switch between (analysis memory)
    # The `impl` the Hessian analysis sets while it differentiates twice (a path whose double backward exists and is
    # cheap); None: the layer as built supports double backward.
    hvp_impl: str | None = None
    # Where checks draw inputs that exercise the basis (uniform on this range; B-spline: its grid and a little
    # outside, where only the base branch acts); None: standard normal.
    sample_range: tuple[float, float] | None = None
    # Relative error a bf16-autocast run may show against the float64 reference (gpu-check's parity): one rounding
    # of the inputs to 8 bits is ~2e-2; a kind that normalises after a bf16 sum amplifies it (KAGN's LayerNorm).
    bf16_tolerance: float = 2e-2
    fused: str | None = None  # fast path: "triton", "compiled", "elementwise" or None
    # Suffixes of state-dict keys that, all present, say a file holds this kind's weights.
    key_markers: tuple[str, ...] = ()
    # Analytic bytes-per-row model for the memory analysis: memory(layer) -> floats saved per input row.
    memory: Callable[[nn.Module], int] | None = None

    def build(self, in_features: int, out_features: int, **kwargs) -> nn.Module:
        return self.layer(in_features, out_features, **{**dict(self.defaults), **kwargs})


_loaded: dict[str, Kind] = {}
_entry_points_read = False


def register_kind(kind: Kind, *, replace: bool = False) -> Kind:
    """Add `kind` to the registry (from a user's package; no kanvision file changes). Returns it."""
    if not isinstance(kind, Kind):
        raise TypeError(f"register_kind takes a kanvision.kinds.Kind record, got {type(kind).__name__}")
    name = kind.name
    if not name or name != name.strip().lower() or name == NONE:
        raise ValueError(f"register_kind: kind name must be a non-empty lower-case word other than 'none', got {name!r}")
    if not replace and (name in _loaded or name in KINDS) and _loaded.get(name) is not kind:
        raise ValueError(f"register_kind: a kind named {name!r} exists already; pass replace=True to override it")
    _loaded[name] = kind
    return kind


def _read_entry_points() -> None:
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _loaded or ep.name in KINDS:
            continue
        try:
            kind = ep.load()
        except Exception as e:  # a broken plug-in must not break kanvision: name it once, keep going
            import warnings
            warnings.warn(f"kanvision: KAN kind plug-in {ep.name!r} ({ep.value}) failed to load: {e}", stacklevel=2)
            continue
        register_kind(kind)


def kind_names() -> tuple[str, ...]:
    """Every registered kind, built-in first (without "none")."""
    _read_entry_points()
    return tuple(dict.fromkeys([*KINDS, *_loaded]))


def available_kinds() -> tuple[str, ...]:
    """The values `kan=` accepts: "none" and every kind."""
    return (NONE, *kind_names())


def normalize_kan_kind(kind: str | None) -> str:
    """None / "none" / a kind name (any case, spaces trimmed) -> canonical name; anything else -> ValueError."""
    name = NONE if kind is None else str(kind).strip().lower()
    if name not in available_kinds():
        raise ValueError(f"unknown kan kind {kind!r}: choose one of {', '.join(map(repr, available_kinds()))} "
                         "(or None), or register your own with kanvision.kinds.register_kind")
    return name


def get_kind(kind: str) -> Kind:
    name = normalize_kan_kind(kind)
    if name == NONE:
        raise ValueError("kan kind 'none' has no KAN layer: it means timm's own Mlp")
    if name not in _loaded:
        module, attr = KINDS[name].split(":")
        register_kind(getattr(importlib.import_module(module), attr), replace=True)
        if _loaded[name].name != name:
            raise RuntimeError(f"{KINDS[name]} is the record of kind {_loaded[name].name!r}, listed as {name!r}")
    return _loaded[name]


def kan_layer_class(kind: str) -> type[nn.Module]:
    return get_kind(kind).layer


def kan_layer_types() -> tuple[type[nn.Module], ...]:
    """The layer classes (and own MLP classes) of every kind, for isinstance checks over a model."""
    return tuple(c for n in kind_names() for c in _own_classes(get_kind(n)))


def _own_classes(kind: Kind) -> tuple[type, ...]:
    """The classes that count as one KAN unit of this kind: its layer, and its own MLP where it has one (GR-KAN's
    MLP holds rationals and plain Linear layers, no layer of the kind)."""
    return (kind.layer,) if kind.mlp is None or not isinstance(kind.mlp, type) else (kind.layer, kind.mlp)


def kind_of_layer(module: nn.Module) -> Kind | None:
    """The kind whose layer (or own MLP) `module` is; None for anything else."""
    for name in kind_names():
        kind = get_kind(name)
        if type(module) in _own_classes(kind):
            return kind
    for name in kind_names():  # subclasses of a kind's classes
        kind = get_kind(name)
        if isinstance(module, _own_classes(kind)):
            return kind
    return None


def is_kan_layer(module: nn.Module) -> bool:
    return kind_of_layer(module) is not None
