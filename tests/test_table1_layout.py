"""Table 1 of the limitations paper (Pal & Das, NeurIPS 2024 SciForDL workshop): the Vision-KAN parameter counts.

The paper reports, for DeiT on CIFAR-100 (224 x 224, patch 16, 100 classes) with KAN MLPs of hidden width 192:
Tiny B-spline 14.3M, Tiny RSWAF 12.6M, Small B-spline 39.4M, Small RSWAF 35.8M. (These four numbers are as the
repo recorded them, README "The paper's CIFAR-100 table"; the paper's text was not available to re-read here.)

The explanation tested: Vision-KAN's code keeps timm's ViT Block as it is, *including its 4x MLP, unused*, and adds
the KAN MLP beside it, so the published counts include dead weights. We build exactly that layout from timm's
own `deit_*_patch16_224` plus a KanMlp per block, and compare with the paper at one decimal of millions.

Counts by hand (the layout test asserts them):
  DeiT-Tiny, dim 192, 12 blocks: patch embed 3*16*16*192 + 192 = 147,648; cls token 192; pos embed 197*192 = 37,824;
    per block norm1 + norm2 2*384 = 768, qkv 192*576 + 576 = 111,168, proj 192*192 + 192 = 37,056 -> 148,992;
    timm MLP (unused) fc1 192*768 + 768 = 148,224, fc2 768*192 + 192 = 147,648 -> 295,872 (12 blocks: 3,550,464);
    final norm 384; head 192*100 + 100 = 19,300. Without any MLP: 1,993,252.
    KAN MLP 192 -> 192 -> 192: B-spline 2 * 192*192*(G + k + 2 = 10) = 737,280 per block (8,847,360);
    RSWAF 2 * (2*192 + 8*192*192) = 590,592 per block (7,087,104).
  DeiT-Small, dim 384: patch 3*256*384 + 384 = 295,296; cls 384; pos 197*384 = 75,648; per block norms 1,536,
    qkv 384*1152 + 1152 = 443,520, proj 384*384 + 384 = 147,840 -> 592,896; timm MLP (unused) 384*1536 + 1536 +
    1536*384 + 384 = 1,181,568 (12 blocks: 14,178,816); final norm 768; head 384*100 + 100 = 38,500.
    Without any MLP: 7,525,348. KAN MLP 384 -> 192 -> 384: B-spline 2 * 384*192*10 = 1,474,560 per block
    (17,694,720); RSWAF (2*384 + 8*384*192) + (2*192 + 8*192*384) = 1,180,800 per block (14,169,600).
"""
import pytest
import timm
import torch

import kanvision  # noqa: F401
from kanvision.layers import KanMlp

KAN_HIDDEN = 192
PAPER_M = {("tiny", "bspline"): 14.3, ("tiny", "rswaf"): 12.6, ("small", "bspline"): 39.4, ("small", "rswaf"): 35.8}
LAYOUT = {  # timm DeiT (its MLP unused) + KAN MLP, worked out in the module docstring
    ("tiny", "bspline"): 1_993_252 + 3_550_464 + 8_847_360,      # 14,391,076
    ("tiny", "rswaf"): 1_993_252 + 3_550_464 + 7_087_104,        # 12,630,820
    ("small", "bspline"): 7_525_348 + 14_178_816 + 17_694_720,   # 39,398,884
    ("small", "rswaf"): 7_525_348 + 14_178_816 + 14_169_600,     # 35,873,764
}
ZOO = {  # our models (no unused MLP): `kanvision params 'kan_deit*_patch16_224' --num-classes 100 --kan-hidden 192`
    ("tiny", "bspline"): 10_840_612, ("tiny", "rswaf"): 9_080_356,
    ("small", "bspline"): 25_220_068, ("small", "rswaf"): 21_694_948,
}


def vision_kan_layout(size: str, kind: str) -> torch.nn.Module:
    """timm's deit_{size}_patch16_224 with a KanMlp added to every Block; the Block's own MLP stays, unused."""
    with torch.device("meta"):
        model = timm.create_model(f"deit_{size}_patch16_224", num_classes=100)
        for block in model.blocks:
            dim = block.norm2.normalized_shape[0]
            block.kan_mlp = KanMlp(dim, KAN_HIDDEN, kind=kind)
    return model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("key", list(LAYOUT), ids=["-".join(k) for k in LAYOUT])
def test_layout_counts(key):
    size, kind = key
    assert n_params(vision_kan_layout(size, kind)) == LAYOUT[key]
    with torch.device("meta"):
        zoo = timm.create_model(f"kan_deit_{size}_patch16_224", kan=kind, kan_hidden=KAN_HIDDEN, num_classes=100)
    # The difference to our model is exactly the unused timm MLPs.
    unused = {"tiny": 3_550_464, "small": 14_178_816}[size]
    assert n_params(zoo) == ZOO[key] == LAYOUT[key] - unused


# Rounded to one decimal of millions (half up), the layout reproduces Tiny RSWAF 12.6M and Small B-spline 39.4M.
# It does not reproduce the other two: Tiny B-spline 14,391,076 is 14.4M (paper 14.3M) and Small RSWAF 35,873,764
# is 35.9M (paper 35.8M). Truncating instead of rounding would give 14.3 and 35.8 but then Small B-spline becomes
# 39.3 (paper 39.4), so no one rounding rule reproduces all four from this layout: the strict xfails record the
# two that differ (an xfail that starts passing fails the suite, so a change is noticed).
# For the record: a layout with 41,077-80,820 fewer parameters in Tiny and 23,765-48,884 fewer in Small would
# round to all four; we found no such difference to justify.
MISMATCH = {("tiny", "bspline"): 14.4, ("small", "rswaf"): 35.9}


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.xfail(
    strict=True, reason=f"layout gives {LAYOUT[k]:,} = {MISMATCH[k]}M, paper {PAPER_M[k]}M")) if k in MISMATCH else k
    for k in PAPER_M], ids=["-".join(k) for k in PAPER_M])
def test_layout_reproduces_table1_to_its_rounding(key):
    rounded = int(LAYOUT[key] / 1e5 + 0.5) / 10
    assert rounded == PAPER_M[key]


def test_no_single_rounding_rule_matches_all_four():
    half_up = {k: int(v / 1e5 + 0.5) / 10 for k, v in LAYOUT.items()}
    truncated = {k: int(v / 1e5) / 10 for k, v in LAYOUT.items()}
    assert [k for k in PAPER_M if half_up[k] != PAPER_M[k]] == [("tiny", "bspline"), ("small", "rswaf")]
    assert [k for k in PAPER_M if truncated[k] != PAPER_M[k]] == [("small", "bspline")]
