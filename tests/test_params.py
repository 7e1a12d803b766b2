"""FLOP counts of `kanvision params` (kanvision/params.py) against values worked out by hand.

Conventions (the module docstring): "matmul" = FlopCounterMode's matrix products and convolutions, 2 FLOPs
per multiply-add, no bias; "basis" = the KAN bases, per input value C(G, k) for a B-spline layer (Cox-de Boor)
and 5 per centre for RSWAF. Every expected number below is written out from the layer's computation, not
from the code under test.
"""
import pytest
import timm
import torch
from timm.layers import Mlp

import kanvision  # noqa: F401  (registers the zoo)
from kanvision.layers import BSplineKAN, KanMlp, RSWAFKAN
from kanvision.analysis.params import count_flops, zoo_rows
from kanvision.kinds.bspline import basis_flops as bspline_basis_flops
from kanvision.kinds.rswaf import basis_flops as rswaf_basis_flops

N, IN, OUT = 7, 6, 4  # rows, in_features, out_features


def test_cox_de_boor_cost_by_hand():
    # G = 5, k = 3: G + 2k + 1 = 12 knots. Order 0: 11 indicators x 2 comparisons = 22.
    # Orders 1, 2, 3: 10 + 9 + 8 = 27 bases x 7 FLOPs (x - t_i, t_{i+p+1} - x, 2 divisions, 2 products, 1 sum) = 189.
    assert bspline_basis_flops(5, 3) == 22 + 189 == 211
    # G = 4, k = 2: 9 knots, G + 2k = 8 order-0 indicators x 2 = 16.
    # Orders 1, 2: 7 + 6 = 13 bases x 7 = 91. Total 16 + 91 = 107.
    assert bspline_basis_flops(4, 2) == 16 + 91 == 107
    # G = 3, k = 1 (linear): 3 + 2 = 5 indicators x 2 = 10; order 1: 4 bases x 7 = 28.
    assert bspline_basis_flops(3, 1) == 38
    # RSWAF: (u - u_j), / h, tanh, square, 1 - : 5 per centre.
    assert rswaf_basis_flops(8) == 40 and rswaf_basis_flops(3) == 15


def _layers():
    """(name, module, expected matmul FLOPs, expected basis FLOPs) for N rows of IN inputs."""
    return [
        # timm Mlp IN -> 10 -> OUT: two products, 2 N (IN*10 + 10*OUT) = 2*7*(60 + 40) = 1400; no KAN basis.
        ("none", lambda: Mlp(IN, 10, OUT), 1400, 0),
        # B-spline IN -> OUT, G=5, k=3: one product of (N, IN*(1 + G + k)) features, base branch included:
        # 2 N IN OUT (G + k + 1) = 2*7*6*4*9 = 3024; basis N*IN values x 211 = 42*211 = 8862.
        ("bspline", lambda: BSplineKAN(IN, OUT, compile=False), 3024, 8862),
        # G=4, k=2: 2*7*6*4*7 = 2352; basis 42 x 107 = 4494.
        ("bspline G4 k2", lambda: BSplineKAN(IN, OUT, grid_size=4, spline_order=2, compile=False), 2352, 4494),
        # RSWAF IN -> OUT, 8 centres: Linear(IN*8 -> OUT, no bias): 2*7*48*4 = 2688; basis 42 x 40 = 1680.
        ("rswaf", lambda: RSWAFKAN(IN, OUT, compile=False), 2688, 1680),
        # 3 centres: 2*7*18*4 = 1008; basis 42 x 15 = 630.
        ("rswaf 3", lambda: RSWAFKAN(IN, OUT, num_grids=3, compile=False), 1008, 630),
        # KanMlp IN -> 10 -> OUT, B-spline: 2*7*9*(6*10 + 10*4) = 12600; basis 7*(6 + 10) = 112 values x 211 = 23632.
        ("kanmlp bspline", lambda: KanMlp(IN, 10, OUT, kind="bspline", compile=False), 12600, 23632),
        # KanMlp IN -> 10 -> OUT, RSWAF: 2*7*8*(60 + 40) = 11200; basis 112 x 40 = 4480.
        ("kanmlp rswaf", lambda: KanMlp(IN, 10, OUT, kind="rswaf", compile=False), 11200, 4480),
    ]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name,build,matmul,basis", _layers(), ids=[r[0] for r in _layers()])
def test_layer_flops_by_hand(name, build, matmul, basis, device):
    with torch.device(device):
        layer = build()
        x = torch.randn(N, IN)
    assert count_flops(layer, x) == {"matmul": matmul, "basis": basis}
    # Leading dimensions are rows too: (1, 7, IN) is the same work.
    assert count_flops(layer, x.unsqueeze(0)) == {"matmul": matmul, "basis": basis}


def test_reference_impl_counts_the_same_products():
    # impl="reference": base branch F.linear (2 N IN OUT) + spline F.linear (2 N IN (G+k) OUT) = 2 N IN OUT (G+k+1).
    assert count_flops(BSplineKAN(IN, OUT, impl="reference"), torch.randn(N, IN)) == {"matmul": 3024, "basis": 8862}


# kan_mixer_tiny_p4_32 at 32x32 (CIFAR-10 head): patch 4 -> 64 tokens, dim 128, 8 blocks, timm's mlp_ratio
# (0.5, 4.0): token MLP 64 -> 64 -> 64 on 128 rows, channel MLP 128 -> 512 -> 128 on 64 rows (kan: 128 -> 128 -> 128).
#   stem conv: 2 * 64 positions * (3*4*4) * 128 = 786,432; head: 2 * 128 * 10 = 2,560
#   token MLP per block: 2 * 128 * (64*64 + 64*64) = 2,097,152
#   channel, none:    2 * 64 * (128*512 + 512*128)     = 16,777,216
#   channel, bspline: 2 * 64 * 9 * (128*128 + 128*128) = 37,748,736; basis 64 rows * (128 + 128) * 211 = 3,457,024
#   channel, rswaf:   2 * 64 * 8 * (128*128 + 128*128) = 33,554,432; basis 64 * 256 * 40 = 655,360
MIXER_TINY = {
    "none": (786_432 + 2_560 + 8 * (2_097_152 + 16_777_216), 0),                    # 151,783,936
    "bspline": (786_432 + 2_560 + 8 * (2_097_152 + 37_748_736), 8 * 3_457_024),      # 319,556,096 / 27,656,192
    "rswaf": (786_432 + 2_560 + 8 * (2_097_152 + 33_554_432), 8 * 655_360),          # 286,001,664 / 5,242,880
}
# kan_convmixer_256_8: patch 2 -> 16x16 = 256 pixels, dim 256, 8 blocks of depthwise 5x5 conv + pointwise KAN.
#   stem: 2 * 256 * (3*2*2) * 256 = 1,572,864; depthwise: 2 * 256 px * 256 ch * 25 = 3,276,800 per block
#   pointwise bspline: 2 * 256 * 256 * 256 * 9 = 301,989,888 per block; basis 256 * 256 * 211 = 13,828,096
#   head: 2 * 256 * 10 = 5,120
CONVMIXER_BSPLINE = (1_572_864 + 5_120 + 8 * (3_276_800 + 301_989_888), 8 * 13_828_096)  # 2,443,711,488 / 110,624,768


@pytest.mark.parametrize("kind", ["none", "bspline", "rswaf"])
def test_zoo_row_flops_mixer_tiny(kind):
    (row,) = zoo_rows(["kan_mixer_tiny_p4_32"], [kind])
    assert (row["flops"], row["basis_flops"]) == MIXER_TINY[kind]


def test_zoo_row_flops_convmixer_bspline_regression():
    # Was "n/a": on the meta device the one-image ConvMixer input is a non-contiguous (pixels, channels) view and
    # the fast layer's `.view` of its features failed.
    (row,) = zoo_rows(["kan_convmixer_256_8"], ["bspline"])
    assert (row["flops"], row["basis_flops"]) == CONVMIXER_BSPLINE
