"""Model zoo: registration, the kan= options, exact parameter counts, gradients everywhere, timm API."""
import math

import pytest
import timm
import torch
from timm.models.convmixer import ConvMixer
from timm.models.mlp_mixer import MlpMixer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import kanvision  # noqa: F401  (registers the zoo)
from kanvision.layers import BSplineKAN, RSWAFKAN
from kanvision.kinds import get_kind, kind_names
from kanvision.models import checkpoint_filter_fn, count_parameters, kan_modules
from kanvision.analysis.params import main as params_main
from marks import slow_after

ZOO = [
    "kan_mixer_tiny_p4_32", "kan_mixer_small_p4_32", "kan_mixer_base_p4_32",
    "kan_convmixer_256_8", "kan_convmixer_512_16", "kan_convmixer_128_8_p4",
    "kan_deit_tiny_patch4_32", "kan_deit_small_patch4_32", "kan_deit_base_patch4_32",
    "kan_deit_tiny_patch16_224", "kan_deit_small_patch16_224", "kan_deit_base_patch16_224",
]
# Every size of every family with the first kinds; tests/test_kinds.py runs every registered kind on one size per family.
KINDS = ["none", "bspline", "rswaf"]


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def n_params(model):
    return count_parameters(model)["trainable"]


def test_every_name_is_registered():
    assert sorted(timm.list_models("kan_*")) == sorted(ZOO)


@pytest.mark.parametrize("name,kan,hidden,expected", [
    ("kan_deit_tiny_patch16_224", "none", None, 5_543_716),
    ("kan_deit_tiny_patch16_224", "bspline", 192, 10_840_612),
    ("kan_deit_tiny_patch16_224", "rswaf", 192, 9_080_356),
    ("kan_deit_small_patch16_224", "none", None, 21_704_164),
    ("kan_deit_small_patch16_224", "bspline", 192, 25_220_068),
    ("kan_deit_small_patch16_224", "rswaf", 192, 21_694_948),
    ("kan_deit_base_patch16_224", "none", None, 85_875_556),
])
def test_paper_table_counts(name, kan, hidden, expected):
    model = meta_model(name, kan=kan, kan_hidden=hidden, num_classes=100)
    assert n_params(model) == expected


@pytest.mark.parametrize("ours,timm_cls,timm_kwargs", [
    ("kan_deit_tiny_patch16_224", VisionTransformer, dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)),
    ("kan_deit_small_patch4_32", VisionTransformer, dict(img_size=32, patch_size=4, embed_dim=384, depth=12,
                                                         num_heads=6)),
    ("kan_mixer_tiny_p4_32", MlpMixer, dict(img_size=32, patch_size=4, num_blocks=8, embed_dim=128)),
    ("kan_convmixer_256_8", ConvMixer, dict(dim=256, depth=8, kernel_size=5, patch_size=2)),
    ("kan_convmixer_128_8_p4", ConvMixer, dict(dim=128, depth=8, kernel_size=5, patch_size=4)),
])
def test_kan_none_is_timms_architecture(ours, timm_cls, timm_kwargs):
    a = meta_model(ours, num_classes=100)
    with torch.device("meta"):
        b = timm_cls(num_classes=100, **timm_kwargs)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


def test_unknown_kind_and_bad_options_are_clear():
    with pytest.raises(ValueError, match="unknown kan kind 'mlp'.*'none', 'bspline', 'rswaf'"):
        timm.create_model("kan_mixer_tiny_p4_32", kan="mlp")
    with pytest.raises(ValueError, match=r"set kan= to a KAN kind \(bspline, rswaf"):
        timm.create_model("kan_mixer_tiny_p4_32", kan_hidden=64)
    with pytest.raises(ValueError, match="use it with kan='none'"):
        timm.create_model("kan_mixer_tiny_p4_32", kan="bspline", match_params="rswaf")
    with pytest.raises(ValueError, match="no residual"):
        timm.create_model("kan_convmixer_256_8", kan="bspline", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="base_activation"):
        timm.create_model("kan_mixer_tiny_p4_32", kan="bspline", kan_kwargs=dict(base_activation="swish"))


def test_kan_options_reach_the_layers(tiny_model):
    model = timm.create_model("kan_deit_tiny_patch4_32", kan="bspline", kan_hidden=32, depth=1,
                              kan_kwargs=dict(grid_size=3, spline_order=2, base_activation="gelu"))
    fc1, fc2 = model.blocks[0].mlp.fc1, model.blocks[0].mlp.fc2
    assert (fc1.in_features, fc1.out_features, fc2.out_features) == (192, 32, 192)
    assert fc1.spline_weight.shape == (32, 192, 5) and isinstance(fc1.base_activation, nn.GELU)
    # Default base branch is efficient-kan's SiLU, not the host block's GELU.
    default = tiny_model("kan_mixer_tiny_p4_32", "bspline")
    assert isinstance(default.blocks[0].mlp_channels.fc1.base_activation, nn.SiLU)
    # Mixer: channel MLPs swapped, token MLPs only on request (timm's token width kept).
    assert isinstance(default.blocks[0].mlp_tokens.fc1, nn.Linear)
    tok = tiny_model("kan_mixer_tiny_p4_32", "rswaf", kan_token_mixing=True)
    assert isinstance(tok.blocks[0].mlp_tokens.fc1, RSWAFKAN) and tok.blocks[0].mlp_tokens.fc1.in_features == 64
    # ConvMixer: the 1x1 conv becomes one KAN layer, or a KAN MLP when kan_hidden is given.
    cm = meta_model("kan_convmixer_256_8", kan="bspline")
    assert isinstance(cm.blocks[0][1].layer, BSplineKAN) and len(kan_modules(cm)) == 8
    assert len(kan_modules(meta_model("kan_convmixer_256_8", kan="bspline", kan_hidden=64))) == 16


@pytest.mark.parametrize("name", slow_after(["kan_mixer_tiny_p4_32", "kan_deit_tiny_patch16_224", "kan_convmixer_256_8"]))
@pytest.mark.parametrize("kind", [k for k in kind_names() if get_kind(k).match_params])
def test_match_params_within_one_percent(name, kind):
    kan = n_params(meta_model(name, kan=kind, num_classes=100))
    mlp = n_params(meta_model(name, match_params=kind, num_classes=100))
    plain = n_params(meta_model(name, num_classes=100))
    assert abs(mlp - kan) <= 0.01 * kan
    # The MLP is widened unless the kind is already the MLP's size within 1% (GR-KAN adds 76 per block).
    assert mlp != plain or abs(kan - plain) <= 0.01 * kan


# Every registered model x kind, one block each (tiny_model: the block code is the same at every depth), keeping
# the real widths, so no parameter anywhere in the zoo's structure can miss its gradient.
@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("kind", slow_after(KINDS, 2))
def test_every_parameter_gets_a_gradient(name, kind, tiny_model):
    torch.manual_seed(0)
    model = tiny_model(name, kind, num_classes=3)
    nn.init.normal_(model.get_classifier().weight)  # timm's Mixer zero-inits its head: no gradient would flow
    size = model.pretrained_cfg["input_size"][-1]
    model(torch.randn(2, 3, size, size)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing
    if kind != "none":
        assert kan_modules(model) and count_parameters(model)["kan"] > 0


def test_full_depth_small_models_train_step():
    for name in ["kan_mixer_tiny_p4_32", "kan_convmixer_256_8", "kan_deit_tiny_patch4_32"]:
        torch.manual_seed(0)
        model = timm.create_model(name, kan="bspline", num_classes=10)
        # timm's Mixer zero-inits its head: every gradient below it would be exactly zero, and "not None" true.
        nn.init.normal_(model.get_classifier().weight)
        y = torch.tensor([1, 2])
        logits = model(torch.randn(2, 3, 32, 32))
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
        # The values: the loss is the mean -log softmax of the targets (float64), and every parameter of the full
        # depth gets a finite, non-zero gradient (what DDP and the optimizer need), not a zero tensor.
        want = -logits.detach().double().log_softmax(-1)[torch.arange(2), y].mean()
        assert torch.allclose(loss.double(), want, rtol=1e-6, atol=1e-6)
        dead = [n for n, p in model.named_parameters() if not (torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0)]
        assert not dead, (name, dead[:5])


def test_kan_init_survives_timm_init():
    torch.manual_seed(0)
    model = timm.create_model("kan_deit_tiny_patch4_32", kan="rswaf", depth=2)
    for layer in kan_modules(model):
        w = layer.spline_linear.weight
        xavier_std = math.sqrt(2.0 / (w.shape[0] + w.shape[1]))  # timm's ViT init would give 0.02
        assert abs(w.std().item() - xavier_std) < 0.05 * xavier_std
    model = timm.create_model("kan_deit_tiny_patch4_32", kan="bspline", depth=1)
    layer = model.blocks[0].mlp.fc1
    bound = 1 / math.sqrt(layer.in_features)  # efficient-kan's kaiming_uniform(a=sqrt(5))
    assert layer.base_weight.abs().max() <= bound and layer.base_weight.std() > 0.5 * bound / math.sqrt(3)
    assert 0 < layer.spline_weight.abs().max() < 0.1  # least-squares fit to noise of scale 0.1 / grid_size


@pytest.mark.parametrize("name", ["kan_mixer_tiny_p4_32", "kan_deit_tiny_patch4_32"])
def test_drop_path_acts_on_kan_branch(name):
    # Two blocks: timm's depth rule gives the first block rate 0 and the last the full rate.
    depth = dict(num_blocks=2) if "mixer" in name else dict(depth=2)
    model = timm.create_model(name, kan="bspline", drop_path_rate=0.5, **depth).train()
    nn.init.normal_(model.get_classifier().weight)
    block = model.blocks[-1]
    mlp = block.mlp_channels if "mixer" in name else block.mlp
    assert isinstance(mlp.fc1, BSplineKAN)
    assert type(block.drop_path if "mixer" in name else block.drop_path2).__name__ == "DropPath"
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", ["kan_mixer_tiny_p4_32", "kan_deit_tiny_patch4_32", "kan_convmixer_256_8"])
def test_timm_api(name, tiny_model):
    model = tiny_model(name, "rswaf", num_classes=7, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    feats = model.forward_features(x)
    assert model.forward_head(feats).shape == (2, 7)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    cfg = model.pretrained_cfg
    assert cfg["mean"] == pytest.approx((0.4914, 0.4822, 0.4465)) and cfg["input_size"] == (3, 32, 32)
    modules = dict(model.named_modules())
    assert cfg["first_conv"] in modules and cfg["classifier"] in modules
    assert meta_model("kan_deit_tiny_patch16_224").pretrained_cfg["num_classes"] == 100
    assert timm.create_model("kan_deit_tiny_patch4_32", depth=1, img_size=48, global_pool="avg")(
        torch.randn(1, 3, 48, 48)).shape == (1, 10)


@pytest.mark.parametrize("name", ["kan_mixer_tiny_p4_32", "kan_deit_tiny_patch4_32", "kan_convmixer_256_8"])
def test_pretrained_file_through_timm(tmp_path, name, tiny_model):
    torch.manual_seed(0)
    model = tiny_model(name, "bspline", num_classes=5).eval()
    # A Lightning-style file: weights under state_dict with the module's `model.` prefix, plus other entries.
    state = {"model." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.ckpt")
    loaded = tiny_model(name, "bspline", num_classes=5, pretrained=True,
                        pretrained_cfg_overlay=dict(file=str(tmp_path / "w.ckpt"), num_classes=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert checkpoint_filter_fn({"module._orig_mod.head.bias": torch.zeros(1)}, model).keys() == {"head.bias"}


def test_params_command(capsys):
    assert params_main(["kan_deit_tiny_patch16_224", "--num-classes", "100", "--kan-hidden", "192"]) == 0
    out = capsys.readouterr().out
    assert "| kan_deit_tiny_patch16_224 | bspline (hidden 192) | 10,840,612 | 8,847,360 |" in out
    assert "| kan_deit_tiny_patch16_224 | none | 5,543,716 | 0 |" in out
    with pytest.raises(SystemExit):
        params_main(["kan_nothing*"])


def test_counts_must_be_whole_numbers():
    """grid_size 3.7 built a grid of 3 and kan_hidden 3.7 a width of 3, without a word."""
    for kwargs, what in [(dict(kan_hidden=3.7), "kan_hidden"), (dict(kan_kwargs=dict(grid_size=3.7)), "kan_kwargs grid_size"),
                         (dict(kan_kwargs=dict(spline_order="2")), "kan_kwargs spline_order")]:
        with pytest.raises(ValueError, match=f"^{what} must be a whole number, got"):
            timm.create_model("kan_mixer_tiny_p4_32", kan="bspline", **kwargs)
    with pytest.raises(ValueError, match="kan_kwargs num_grids must be a whole number, got 7.5"):
        timm.create_model("kan_mixer_tiny_p4_32", kan="rswaf", kan_kwargs=dict(num_grids=7.5))
    fc1 = meta_model("kan_mixer_tiny_p4_32", kan="bspline", kan_hidden=32.0,
                     kan_kwargs=dict(grid_size=3.0)).blocks[0].mlp_channels.fc1
    assert fc1.out_features == 32 and fc1.grid_size == 3 and fc1.spline_weight.shape[-1] == 3 + 3
    from kanvision.train.module import ConfigError, ImageClassifier
    with pytest.raises(ConfigError, match="kan_kwargs grid_size must be a whole number, got 3.7"):
        ImageClassifier(kan="bspline", kan_kwargs={"grid_size": 3.7}, model_kwargs={"num_blocks": 1})
