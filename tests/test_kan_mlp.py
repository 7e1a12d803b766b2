"""KanMlp is a drop-in for timm.layers.Mlp; kan_mlp_layer picks the implementation by kind."""
import inspect
from functools import partial

import pytest
import torch
from timm.layers import Mlp
from timm.models.mlp_mixer import MixerBlock
from timm.models.vision_transformer import Block
from torch import nn

import kanvision.layers as kl
from kanvision.kinds import get_kind, kind_names
from kanvision.layers import BSplineKAN, KanMlp, RSWAFKAN, kan_mlp_layer
from marks import slow_after


def test_public_names():
    for name in ("BSplineKAN", "RSWAFKAN", "KanMlp", "kan_mlp_layer"):
        assert hasattr(kl, name)


def test_accepts_every_keyword_of_timm_mlp():
    timm_params = [p for p in inspect.signature(Mlp.__init__).parameters if p != "self"]
    ours = inspect.signature(KanMlp.__init__).parameters
    missing = [p for p in timm_params if p not in ours]
    assert not missing, f"KanMlp lacks timm Mlp keywords {missing}"
    # First two positional, as MixerBlock calls them.
    assert list(ours)[1:3] == ["in_features", "hidden_features"]
    values = dict(in_features=6, hidden_features=5, out_features=4, act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                  bias=True, drop=0.1, use_conv=False, device="cpu", dtype=torch.float64)
    mlp = KanMlp(**{k: values[k] for k in timm_params})
    assert mlp(torch.randn(3, 6, dtype=torch.float64)).shape == (3, 4)


@pytest.mark.parametrize("kind,layer_cls", [("bspline", BSplineKAN), ("rswaf", RSWAFKAN), ("BSpline", BSplineKAN)])
def test_factory_kinds(kind, layer_cls):
    factory = kan_mlp_layer(kind, grid_size=4) if layer_cls is BSplineKAN else kan_mlp_layer(kind, num_grids=6)
    mlp = factory(8, 12)
    assert isinstance(mlp, KanMlp)
    assert isinstance(mlp.fc1, layer_cls) and isinstance(mlp.fc2, layer_cls)
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (8, 12, 8)
    if layer_cls is BSplineKAN:
        assert mlp.fc1.grid_size == 4
    else:
        assert mlp.fc1.num_grids == 6


@pytest.mark.parametrize("kind", [None, "none", "None"])
def test_factory_none_is_timm_mlp(kind):
    assert kan_mlp_layer(kind) is Mlp


def test_factory_rejects_unknown_kind_listing_valid_ones():
    with pytest.raises(ValueError, match=r"'fourier'.*'none'.*'bspline'.*'rswaf'"):
        kan_mlp_layer("fourier")
    with pytest.raises(ValueError, match="KAN keywords"):
        kan_mlp_layer("none", grid_size=3)


def test_act_layer_becomes_base_activation_unless_given():
    assert isinstance(KanMlp(4, 4, act_layer=nn.GELU).fc1.base_activation, nn.GELU)
    assert isinstance(KanMlp(4, 4).fc1.base_activation, nn.SiLU)
    mlp = KanMlp(4, 4, act_layer=nn.GELU, base_activation=nn.Tanh)
    assert isinstance(mlp.fc2.base_activation, nn.Tanh)


def test_parameter_count_is_two_kan_layers():
    mlp = KanMlp(192, 192, bias=True)  # bias accepted, KAN layers have none
    assert sum(p.numel() for p in mlp.parameters()) == 2 * 10 * 192 * 192
    mlp = KanMlp(192, 192, kind="rswaf")
    assert sum(p.numel() for p in mlp.parameters()) == 2 * (2 * 192 + 8 * 192 * 192)


def test_use_conv_is_channels_first():
    torch.manual_seed(0)
    mlp = KanMlp(6, 8, 5, use_conv=True)
    x = torch.randn(2, 6, 3, 4)
    y = mlp(x)
    assert y.shape == (2, 5, 3, 4)
    mlp.use_conv = False
    assert torch.allclose(y, mlp(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), atol=1e-6)


def test_dropout_and_norm_follow_timm():
    mlp = KanMlp(4, 6, norm_layer=nn.LayerNorm, drop=(0.1, 0.2))
    assert (mlp.drop1.p, mlp.drop2.p) == (0.1, 0.2)
    assert isinstance(mlp.norm, nn.LayerNorm) and mlp.norm.normalized_shape == (6,)
    mlp.eval()
    x = torch.randn(3, 4)
    assert torch.equal(mlp(x), mlp(x))


@pytest.mark.parametrize("kind", slow_after(kind_names(), 2))
def test_plugs_into_timm_blocks_unchanged(kind):
    torch.manual_seed(1)
    # 8 tokens: the token MLP is a KAN layer too, and GR-KAN splits its channels into 8 groups.
    mixer = MixerBlock(16, seq_len=8, mlp_layer=kan_mlp_layer(kind))
    mlp_cls = get_kind(kind).mlp or KanMlp  # a kind's own MLP class (GR-KAN), else KanMlp
    assert isinstance(mixer.mlp_channels, mlp_cls) and isinstance(mixer.mlp_tokens, mlp_cls)
    out = mixer(torch.randn(2, 8, 16))
    assert out.shape == (2, 8, 16)
    vit_block = Block(16, num_heads=2, mlp_layer=kan_mlp_layer(kind))
    assert isinstance(vit_block.mlp, mlp_cls)
    x = torch.randn(2, 5, 16)
    out = vit_block(x)
    out.sum().backward()
    assert all(p.grad is not None for p in vit_block.parameters() if p.requires_grad)
    # The values: the block is timm's pre-norm residual sum with the KanMlp as its MLP branch on (B, N, C) tokens,
    # and every trainable parameter gets a finite, non-zero gradient (not a zero tensor).
    with torch.no_grad():
        x1 = x + vit_block.ls1(vit_block.attn(vit_block.norm1(x)))
        assert torch.allclose(out, x1 + vit_block.ls2(vit_block.mlp(vit_block.norm2(x1))), rtol=1e-6, atol=1e-6)
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in vit_block.parameters() if p.requires_grad)


def test_partial_keywords_reach_layers():
    factory = kan_mlp_layer("bspline", grid_size=7, spline_order=2, grid_range=(-3, 3))
    assert isinstance(factory, partial)
    layer = factory(4, 4).fc1
    assert (layer.grid_size, layer.spline_order, layer.grid_range) == (7, 2, (-3.0, 3.0))
