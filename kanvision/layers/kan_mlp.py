"""KanMlp: a drop-in for timm.layers.Mlp whose two linear maps are KAN layers of any registered kind.

timm blocks build their channel MLP as `mlp_layer(in_features, hidden_features, act_layer=..., drop=...)`
(MixerBlock positionally), so `mlp_layer=kan_mlp_layer(kind)` swaps it with no fork of timm code. A kind whose
record names its own MLP (`Kind.mlp`, e.g. GR-KAN's rational -> Linear -> rational -> Linear in KAT's layout) gets
that class instead.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from timm.layers import Mlp
from timm.layers.helpers import to_2tuple
from torch import nn

from kanvision.kinds import NONE, available_kinds, get_kind, kan_layer_class, normalize_kan_kind

__all__ = ["KAN_KINDS", "ChannelsFirst", "KanMlp", "kan_layer_class", "kan_mlp_layer", "normalize_kan_kind"]


def __getattr__(name: str):
    if name == "KAN_KINDS":  # every registered kind, "none" first (computed: plug-ins register at run time)
        return available_kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ChannelsFirst(nn.Module):
    """Apply a channels-last layer to (B, C, *spatial) tensors, as a 1x1 convolution would."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.movedim(1, -1)).movedim(-1, 1)


class KanMlp(nn.Module):
    """in -> KAN -> (norm) -> KAN -> out, with dropout where timm's Mlp has it.

    Accepts every keyword of `timm.layers.Mlp`. `act_layer` becomes the kind's activation keyword (B-spline: the
    base branch) unless that keyword is given in the KAN keywords; kinds without one ignore it. `bias` is
    accepted for compatibility and ignored: the KAN layers carry their own bias, or none, as published.
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
        record = get_kind(kind)
        self.kind = record.name
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        kw = dict(kan_kwargs, device=device, dtype=dtype)
        if record.act_keyword and act_layer is not None:
            kw.setdefault(record.act_keyword, act_layer)
        drop_probs = to_2tuple(drop)

        self.fc1 = record.build(in_features, hidden_features, **kw)
        self.drop1 = nn.Dropout(drop_probs[0])
        self.norm = norm_layer(hidden_features, device=device, dtype=dtype) if norm_layer is not None else nn.Identity()
        self.fc2 = record.build(hidden_features, out_features, **kw)
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
    """The `mlp_layer` for timm blocks: timm's own Mlp for None/"none", the kind's own MLP class where its record
    names one, else a KanMlp partial."""
    name = normalize_kan_kind(kind)
    if name == NONE:
        if kan_kwargs:
            raise ValueError(f"kan kind 'none' takes no KAN keywords, got {sorted(kan_kwargs)}")
        return Mlp
    record = get_kind(name)
    if record.mlp is not None:
        return partial(record.mlp, **{**dict(record.defaults), **kan_kwargs})
    return partial(KanMlp, kind=name, **kan_kwargs)
