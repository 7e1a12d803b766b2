"""MLP-Mixer for 32x32 inputs (patch 4, 64 tokens) with KAN channel MLPs: timm's MlpMixer and MixerBlock.

With kan=<a KAN kind> (kanvision.kinds) each block's channel MLP (dim -> 4 dim -> dim in timm) becomes a KanMlp
dim -> kan_hidden -> dim (kan_hidden defaults to dim). Token-mixing MLPs stay timm's unless
kan_token_mixing=True; they then become KanMlp seq_len -> tokens_dim -> seq_len, keeping timm's
token width (mlp_ratio[0] * dim), since kan_hidden names the channel MLP's width.
"""
from __future__ import annotations

from functools import partial

from timm.layers import Mlp
from timm.models import generate_default_cfgs, register_model
from timm.models.mlp_mixer import MixerBlock, MlpMixer

from kanvision.hub.pretrained import apply_tag, tag_cfgs, untagged_default
from kanvision.models._factory import KanSpec, build_kan_model, cifar_cfg

__all__ = ["kan_mixer_block"]


def kan_mixer_block(dim, seq_len, mlp_ratio=(0.5, 4.0), *, channel_mlp=Mlp, token_mlp=Mlp, mlp_layer=None,
                    act_layer=None, drop=0.0, device=None, dtype=None, **kwargs) -> MixerBlock:
    """timm's MixerBlock with its channel MLP (and optionally token MLP) built by other layers.

    MixerBlock builds both MLPs from one `mlp_layer`; this builds it with the token layer and swaps the
    channel MLP in, so norms, residuals and drop-path (stochastic depth acts on the KAN branch too) are timm's.
    """
    extra = {} if act_layer is None else {"act_layer": act_layer}
    block = MixerBlock(dim, seq_len, mlp_ratio, mlp_layer=token_mlp, drop=drop, device=device, dtype=dtype,
                       **extra, **kwargs)
    if channel_mlp is not token_mlp:
        channels_dim = int(block.mlp_channels.fc1.out_features)
        block.mlp_channels = channel_mlp(dim, channels_dim, drop=drop, device=device, dtype=dtype, **extra)
    return block


def _block_layer(spec: KanSpec, embed_dim: int, token_mixing: bool):
    channel = spec.mlp_layer(default_hidden=embed_dim if spec.is_kan else None)
    token = KanSpec(spec.kind, None, spec.kwargs).mlp_layer() if token_mixing else Mlp
    return partial(kan_mixer_block, channel_mlp=channel, token_mlp=token)


def _create_kan_mixer(variant, pretrained=False, **kwargs) -> MlpMixer:
    # A pretrained tag (timm passes it as pretrained_cfg="cifar10_bspline") fixes kan= and the weights file.
    return _build_kan_mixer(variant, pretrained, **apply_tag(variant, pretrained, kwargs))


def _build_kan_mixer(variant, pretrained=False, kan=None, kan_hidden=None, kan_kwargs=None,
                     kan_token_mixing=False, match_params=None, **kwargs) -> MlpMixer:
    spec = KanSpec.from_args(kan, kan_hidden, kan_kwargs, match_params)
    if kan_token_mixing and not (spec.is_kan or spec.match_params):
        raise ValueError("kan_token_mixing=True needs kan= set to a KAN kind (kanvision kinds lists them)")
    if kwargs.get("block_layer") or kwargs.get("mlp_layer"):
        raise ValueError("kan_mixer models build their own block_layer/mlp_layer from kan=...; do not pass them")
    embed_dim = kwargs["embed_dim"]
    # The matched MLP widens only the channel MLPs; with kan_token_mixing the KAN target includes
    # KAN token MLPs, so the channel MLP absorbs that difference too.
    return build_kan_model(MlpMixer, variant, pretrained, spec, kwargs, layer_kwargs=lambda s: dict(
        block_layer=_block_layer(s, embed_dim, kan_token_mixing and s.is_kan)))


_TINY = cifar_cfg(first_conv="stem.proj", classifier="head", fixed_input_size=True)
default_cfgs = untagged_default(generate_default_cfgs({
    "kan_mixer_tiny_p4_32": _TINY,
    **tag_cfgs("kan_mixer_tiny_p4_32", _TINY),  # shipped weights: checkpoints/, see kanvision.hub.pretrained
    "kan_mixer_small_p4_32": cifar_cfg(first_conv="stem.proj", classifier="head", fixed_input_size=True),
    "kan_mixer_base_p4_32": cifar_cfg(first_conv="stem.proj", classifier="head", fixed_input_size=True),
}))


@register_model
def kan_mixer_tiny_p4_32(pretrained=False, **kwargs) -> MlpMixer:
    """Mixer, dim 128, 8 blocks, patch 4 on 32x32 (64 tokens); kan= swaps the channel MLPs."""
    model_args = dict(img_size=32, patch_size=4, num_blocks=8, embed_dim=128)
    return _create_kan_mixer("kan_mixer_tiny_p4_32", pretrained, **dict(model_args, **kwargs))


@register_model
def kan_mixer_small_p4_32(pretrained=False, **kwargs) -> MlpMixer:
    """Mixer, dim 256, 8 blocks, patch 4 on 32x32; kan= swaps the channel MLPs."""
    model_args = dict(img_size=32, patch_size=4, num_blocks=8, embed_dim=256)
    return _create_kan_mixer("kan_mixer_small_p4_32", pretrained, **dict(model_args, **kwargs))


@register_model
def kan_mixer_base_p4_32(pretrained=False, **kwargs) -> MlpMixer:
    """Mixer, dim 512, 12 blocks, patch 4 on 32x32; kan= swaps the channel MLPs."""
    model_args = dict(img_size=32, patch_size=4, num_blocks=12, embed_dim=512)
    return _create_kan_mixer("kan_mixer_base_p4_32", pretrained, **dict(model_args, **kwargs))
