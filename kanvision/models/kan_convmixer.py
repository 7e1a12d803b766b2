"""ConvMixer for 32x32 inputs (kernel 5, patch 2) with a KAN channel mixer: timm's ConvMixer.

A ConvMixer block is  x + BN(act(depthwise_conv(x)))  ->  pointwise 1x1 conv  ->  act -> BN.
With kan=<a KAN kind> (kanvision.kinds) the pointwise 1x1 conv (dim -> dim, with bias) is what is replaced:
- kan_hidden=None (default): by ONE KAN layer dim -> dim applied to the channel vector of every pixel
  (a 1x1 conv is one linear map, so one KAN layer is its counterpart);
- kan_hidden=H: by a two-layer KanMlp dim -> H -> dim at every pixel.
The activation and BatchNorm after it, the depthwise residual part, stem and head stay timm's.
match_params (with kan="none") replaces the pointwise conv by timm's Mlp dim -> H -> dim (1x1 convs) with H
sized to the KAN variant. timm's ConvMixer has no residual around the channel mixer, hence no stochastic
depth: drop_path_rate > 0 is refused rather than silently ignored.
"""
from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from timm.models.convmixer import ConvMixer
from torch import nn

from kanvision.layers import ChannelsFirst
from kanvision.hub.pretrained import apply_tag, tag_cfgs, untagged_default
from kanvision.models._factory import KanSpec, build_kan_model, cifar_cfg

POINTWISE = 1  # index of the 1x1 conv inside each timm ConvMixer block (nn.Sequential)


def _channel_mixer(spec: KanSpec, dim: int, **factory) -> nn.Module:
    if spec.is_kan and spec.hidden is None:
        return ChannelsFirst(spec.single_layer(dim, dim, **factory))
    return spec.mlp_layer()(dim, spec.hidden, use_conv=True, **factory)


def _swap_channel_mixers(model: ConvMixer, spec: KanSpec) -> ConvMixer:
    if spec.kind == "none" and spec.hidden is None:
        return model  # exactly timm's ConvMixer
    for block in model.blocks:
        conv = block[POINTWISE]
        if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)):
            raise RuntimeError("timm's ConvMixer layout changed: block[1] is no longer the pointwise conv")
        block[POINTWISE] = _channel_mixer(spec, model.num_features, device=conv.weight.device,
                                          dtype=conv.weight.dtype)
    return model


def _create_kan_convmixer(variant, pretrained=False, **kwargs) -> ConvMixer:
    # A pretrained tag (timm passes it as pretrained_cfg="cifar10_bspline") fixes kan= and the weights file.
    return _build_kan_convmixer(variant, pretrained, **apply_tag(variant, pretrained, kwargs))


def _build_kan_convmixer(variant, pretrained=False, kan=None, kan_hidden=None, kan_kwargs=None,
                          match_params=None, drop_path_rate=None, **kwargs) -> ConvMixer:
    spec = KanSpec.from_args(kan, kan_hidden, kan_kwargs, match_params)
    if spec.kind == "none" and spec.hidden is None and spec.match_params is None \
            and spec.kwargs.get("init", "default") != "default":
        raise ValueError(f"{variant}: kan='none' with kan_kwargs init={spec.kwargs['init']!r}: ConvMixer's "
                         "channel mixer is one 1x1 conv, not an MLP, so there is nothing to apply it to; use "
                         "kan=<a KAN kind>, or match_params=... for an MLP mixer")
    if drop_path_rate:
        raise ValueError(f"{variant}: drop_path_rate={drop_path_rate} has nothing to act on: ConvMixer has no "
                         "residual around its channel mixer (timm's ConvMixer has no stochastic depth); use 0")
    return build_kan_model(ConvMixer, variant, pretrained, spec, kwargs, post=_swap_channel_mixers)


_CFG = cifar_cfg(first_conv="stem.0", classifier="head")
default_cfgs = untagged_default(generate_default_cfgs({
    "kan_convmixer_256_8": _CFG,
    "kan_convmixer_512_16": _CFG,
    "kan_convmixer_128_8_p4": _CFG,
    **tag_cfgs("kan_convmixer_128_8_p4", _CFG),  # shipped weights: checkpoints/, see kanvision.hub.pretrained
}))


@register_model
def kan_convmixer_256_8(pretrained=False, **kwargs) -> ConvMixer:
    """ConvMixer-256/8, kernel 5, patch 2 on 32x32; kan= swaps the pointwise (1x1) channel-mixing convs."""
    model_args = dict(dim=256, depth=8, kernel_size=5, patch_size=2)
    return _create_kan_convmixer("kan_convmixer_256_8", pretrained, **dict(model_args, **kwargs))


@register_model
def kan_convmixer_512_16(pretrained=False, **kwargs) -> ConvMixer:
    """ConvMixer-512/16, kernel 5, patch 2 on 32x32; kan= swaps the pointwise (1x1) channel-mixing convs."""
    model_args = dict(dim=512, depth=16, kernel_size=5, patch_size=2)
    return _create_kan_convmixer("kan_convmixer_512_16", pretrained, **dict(model_args, **kwargs))


@register_model
def kan_convmixer_128_8_p4(pretrained=False, **kwargs) -> ConvMixer:
    """ConvMixer-128/8, kernel 5, patch 4 on 32x32 (8x8 pixels): the ConvMixer the Hessian study trains on a CPU
    (an epoch of the B-spline variant is ~4 min on 2 cores, against ~30 min for ConvMixer-256/8)."""
    model_args = dict(dim=128, depth=8, kernel_size=5, patch_size=4)
    return _create_kan_convmixer("kan_convmixer_128_8_p4", pretrained, **dict(model_args, **kwargs))
