"""KAN kinds: one module (or folder) per kind, each with its `KIND` record, listed in `registry.KINDS`.

    >>> from kanvision.kinds import kind_names, get_kind
    >>> get_kind("bspline").params(192, 192, {})     # 10 parameters per edge
    368640
"""
from kanvision.kinds.registry import (KINDS, NONE, Kind, available_kinds, get_kind, is_kan_layer, kan_layer_class,
                                      kan_layer_types, kind_names, kind_of_layer, normalize_kan_kind, register_kind)

__all__ = ["KINDS", "NONE", "Kind", "available_kinds", "get_kind", "is_kan_layer", "kan_layer_class", "kan_layer_types",
           "kind_names", "kind_of_layer", "normalize_kan_kind", "register_kind"]
