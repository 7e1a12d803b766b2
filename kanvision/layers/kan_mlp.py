"""KanMlp: a drop-in for timm.layers.Mlp whose two linear maps are KAN layers.

timm blocks build their channel MLP as `mlp_layer(in_features, hidden_features, act_layer=..., drop=...)`
(MixerBlock positionally), so `mlp_layer=kan_mlp_layer("bspline")` swaps it with no fork of timm code.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from timm.layers import Mlp
from timm.layers.helpers import to_2tuple
from torch import nn

from .bspline import BSplineKAN
from .rswaf import RSWAFKAN

__all__ = ["KAN_KINDS", "ChannelsFirst", "KanMlp", "kan_layer_class", "kan_mlp_layer", "normalize_kan_kind"]

KAN_LAYERS: dict[str, type[nn.Module]] = {"bspline": BSplineKAN, "rswaf": RSWAFKAN}
KAN_KINDS = ("none", "bspline", "rswaf")


def normalize_kan_kind(kind: str | None) -> str:
    """None / "none" / "bspline" / "rswaf" (any case) -> canonical name; anything else -> ValueError."""
    name = "none" if kind is None else str(kind).strip().lower()
    if name not in KAN_KINDS:
        raise ValueError(f"unknown kan kind {kind!r}: choose one of {', '.join(map(repr, KAN_KINDS))} (or None)")
    return name


def kan_layer_class(kind: str) -> type[nn.Module]:
    name = normalize_kan_kind(kind)
    if name == "none":
        raise ValueError("kan kind 'none' has no KAN layer: it means timm's own Mlp")
    return KAN_LAYERS[name]


class ChannelsFirst(nn.Module):
    """Apply a channels-last layer to (B, C, *spatial) tensors, as a 1x1 convolution would."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.movedim(1, -1)).movedim(-1, 1)


class KanMlp(nn.Module):
    """in -> KAN -> (norm) -> KAN -> out, with dropout where timm's Mlp has it.

    Accepts every keyword of `timm.layers.Mlp`. `act_layer` becomes the B-spline base activation unless
    `base_activation` is given in the KAN keywords (RSWAF has no base branch and ignores it). `bias` is
    accepted for compatibility and ignored: KAN layers have no bias (efficient-kan, Vision-KAN).
    `use_conv=True` takes channels-first (B, C, H, W) input, like timm's Mlp with 1x1 convolutions.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
        bias: bool | tuple[bool, bool] = True,
        drop: float | tuple[float, float] = 0.0,
        use_conv: bool = False,
        device=None,
        dtype=None,
        *,
        kind: str = "bspline",
        **kan_kwargs,
    ):
        super().__init__()
        layer_cls = kan_layer_class(kind)
        self.kind = normalize_kan_kind(kind)
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        kw = dict(kan_kwargs, device=device, dtype=dtype)
        if self.kind == "bspline" and act_layer is not None:
            kw.setdefault("base_activation", act_layer)
        drop_probs = to_2tuple(drop)

        self.fc1 = layer_cls(in_features, hidden_features, **kw)
        self.drop1 = nn.Dropout(drop_probs[0])
        self.norm = norm_layer(hidden_features, device=device, dtype=dtype) if norm_layer is not None else nn.Identity()
        self.fc2 = layer_cls(hidden_features, out_features, **kw)
        self.drop2 = nn.Dropout(drop_probs[1])
        self.use_conv = use_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_conv:
            x = x.movedim(1, -1)
        x = self.drop1(self.fc1(x))
        x = self.drop2(self.fc2(self.norm(x)))
        return x.movedim(-1, 1) if self.use_conv else x

    def kan_layers(self) -> list[nn.Module]:
        return [self.fc1, self.fc2]


def kan_mlp_layer(kind: str | None, **kan_kwargs) -> Callable[..., nn.Module]:
    """The `mlp_layer` for timm blocks: timm's own Mlp for None/"none", else a KanMlp partial."""
    name = normalize_kan_kind(kind)
    if name == "none":
        if kan_kwargs:
            raise ValueError(f"kan kind 'none' takes no KAN keywords, got {sorted(kan_kwargs)}")
        return Mlp
    return partial(KanMlp, kind=name, **kan_kwargs)
