"""DeiT (timm's VisionTransformer, class token, no distillation token) with KAN channel MLPs.

With kan=<a KAN kind> (kanvision.kinds) every block's MLP (dim -> 4 dim -> dim) becomes the kind's MLP through
VisionTransformer's `mlp_layer` hook: a KanMlp dim -> kan_hidden -> dim for kinds whose hidden width is "dim"
(kan_hidden defaults to dim; DeiT-KAN used 192 at every size: pass kan_hidden=192), the kind's own MLP at DeiT's
4 dim for "mlp" kinds (GR-KAN: kan='grkan' on kan_deit_tiny_patch16_224 is KAT-T, and KAT's released files load
with pretrained=True, pretrained_cfg_overlay=dict(file=..., num_classes=1000)). Attention, norms, drop-path and the
head are timm's (KAT's kan_mimetic attention init is not reproduced: loaded weights replace it).
Two resolutions: patch 4 on 32x32 (CIFAR as is) and patch 16 on 224x224 (CIFAR upsampled, the paper's
CIFAR-100 table).
"""
from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter_fn

from kanvision.models._factory import KanSpec, build_kan_model, checkpoint_filter_fn, cifar_cfg

WIDTHS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}  # embed dim, heads (DeiT)


def _filter_fn(state_dict, model):
    # Strip training wrappers, then timm's ViT remapping (e.g. position-embedding resize to a new img_size).
    state_dict = vit_filter_fn(checkpoint_filter_fn(state_dict, model), model)
    head = state_dict.get("head.weight")
    if head is not None and model.num_classes and head.shape[0] != model.num_classes:
        # timm drops the head itself only when num_classes differs from the cfg's; a file of another class count
        # (KAT's ImageNet checkpoints: 1,000) would otherwise stop in load_state_dict with a size-mismatch dump.
        raise ValueError(f"the weights file has a {head.shape[0]}-class head, the model {model.num_classes}: pass "
                         f"pretrained_cfg_overlay=dict(file=..., num_classes={head.shape[0]}) to load it whole, or "
                         "num_classes=N (another count) to fine-tune from it without its head")
    return state_dict


def _create_kan_deit(variant, pretrained=False, kan=None, kan_hidden=None, kan_kwargs=None, match_params=None,
                     **kwargs) -> VisionTransformer:
    spec = KanSpec.from_args(kan, kan_hidden, kan_kwargs, match_params)
    if kwargs.get("mlp_layer"):
        raise ValueError("kan_deit models build their own mlp_layer from kan=...; do not pass mlp_layer")
    embed_dim = kwargs["embed_dim"]
    return build_kan_model(VisionTransformer, variant, pretrained, spec, kwargs, filter_fn=_filter_fn, layer_kwargs=lambda s: dict(
        mlp_layer=s.mlp_layer(default_hidden=embed_dim if s.is_kan else None)))


def _cfg(num_classes: int, img_size: int):
    return cifar_cfg(num_classes=num_classes, img_size=img_size, first_conv="patch_embed.proj", classifier="head",
                     fixed_input_size=True)


default_cfgs = generate_default_cfgs({
    **{f"kan_deit_{size}_patch4_32": _cfg(10, 32) for size in WIDTHS},
    **{f"kan_deit_{size}_patch16_224": _cfg(100, 224) for size in WIDTHS},
})


@register_model
def kan_deit_tiny_patch4_32(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-Tiny (dim 192, 3 heads, depth 12), patch 4 on 32x32; kan= swaps every block's MLP."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)
    return _create_kan_deit("kan_deit_tiny_patch4_32", pretrained, **dict(model_args, **kwargs))


@register_model
def kan_deit_tiny_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-Tiny (dim 192, 3 heads, depth 12), patch 16 on 224x224; kan= swaps every block's MLP."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_kan_deit("kan_deit_tiny_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def kan_deit_small_patch4_32(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-Small (dim 384, 6 heads, depth 12), patch 4 on 32x32; kan= swaps every block's MLP."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6)
    return _create_kan_deit("kan_deit_small_patch4_32", pretrained, **dict(model_args, **kwargs))


@register_model
def kan_deit_small_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-Small (dim 384, 6 heads, depth 12), patch 16 on 224x224; kan= swaps every block's MLP."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_kan_deit("kan_deit_small_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def kan_deit_base_patch4_32(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-Base (dim 768, 12 heads, depth 12), patch 4 on 32x32; kan= swaps every block's MLP."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=768, depth=12, num_heads=12)
    return _create_kan_deit("kan_deit_base_patch4_32", pretrained, **dict(model_args, **kwargs))


@register_model
def kan_deit_base_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-Base (dim 768, 12 heads, depth 12), patch 16 on 224x224; kan= swaps every block's MLP."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_kan_deit("kan_deit_base_patch16_224", pretrained, **dict(model_args, **kwargs))
