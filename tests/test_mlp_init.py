"""kan="none" with kan_kwargs={"init": ...}: the channel MLPs take the named scheme (the study's MLP arm)."""
import math

import pytest
import timm
import torch
from timm.layers import Mlp

import kanvision  # noqa: F401  (registers the zoo)
from kanvision.layers.mlp_init import InitMlp


def channel_mlps(model):
    return [b.mlp_channels for b in model.blocks]


def build(init, **kw):
    torch.manual_seed(0)
    return timm.create_model("kan_mixer_tiny_p4_32", kan="none", kan_kwargs={"init": init}, **kw)


@pytest.mark.parametrize("init, std", [
    # gain(a = sqrt(5)) = sqrt(2 / 6) = 1/sqrt(3): std = 1 / sqrt(3 fan_in) for both kaiming draws
    ("kaiming_normal", lambda fi, fo: 1 / math.sqrt(3 * fi)),
    ("kaiming_uniform", lambda fi, fo: 1 / math.sqrt(3 * fi)),
    ("lecun", lambda fi, fo: 1 / math.sqrt(fi)),
    ("glorot", lambda fi, fo: math.sqrt(2 / (fi + fo))),
])
def test_channel_mlp_weights_follow_the_scheme_after_timms_init_pass(init, std):
    model = build(init)
    for mlp in channel_mlps(model):
        assert isinstance(mlp, InitMlp)
        for fc in (mlp.fc1, mlp.fc2):
            fo, fi = fc.weight.shape
            got = fc.weight.std().item()
            assert abs(got / std(fi, fo) - 1) < 0.03, (init, fc.weight.shape, got, std(fi, fo))
    # the token MLPs are not the layers kan= swaps: timm's init stays
    tok = model.blocks[0].mlp_tokens
    assert type(tok) is Mlp


def test_orthogonal_rows_are_orthonormal():
    fc1 = channel_mlps(build("orthogonal"))[0].fc1.weight.double()  # (512, 128): columns orthonormal
    eye = fc1.T @ fc1
    assert torch.allclose(eye, torch.eye(eye.shape[0], dtype=eye.dtype), atol=1e-5)


def test_default_is_timms_model_exactly():
    torch.manual_seed(0)
    plain = timm.create_model("kan_mixer_tiny_p4_32", kan="none")
    chosen = build("default")
    assert all(type(m) is Mlp for m in channel_mlps(chosen))
    for (k, a), (_, b) in zip(plain.state_dict().items(), chosen.state_dict().items()):
        assert torch.equal(a, b), k


def test_matched_mlp_keeps_the_choice_and_other_keywords_are_refused():
    model = timm.create_model("kan_mixer_tiny_p4_32", kan="none", match_params="bspline",
                              kan_kwargs={"init": "glorot"})
    assert all(isinstance(m, InitMlp) and m.init == "glorot" for m in channel_mlps(model))
    with pytest.raises(ValueError, match="init must be one of"):
        build("xavier")
    with pytest.raises(ValueError, match="accepts only"):
        timm.create_model("kan_mixer_tiny_p4_32", kan="none", kan_kwargs={"grid_size": 5})
    with pytest.raises(ValueError, match="1x1 conv"):
        timm.create_model("kan_convmixer_256_8", kan="none", kan_kwargs={"init": "glorot"})
