"""GR-KAN (KAT): the group rational as Adamdad/rational_kat_cu's kernels compute it, exact gradients, KAT's layout.

The reference below is written from the kernels' formula term by term (explicit powers, not Horner), in float64:
    F(x) = sum_k a_k x^k / (1 + sum_k |b_k| |x|^(k+1)),  channel c in group c // (C / groups).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from kanvision.analysis.memory import saved_tensor_bytes
from kanvision.kinds.grkan import INIT_COEFFICIENTS, KIND, RATIONAL_FLOPS, GRKANLayer, GRKANMlp, GroupRational
from kanvision.kinds.grkan_kernels import group_rational, rational_reference

ROOT = Path(__file__).resolve().parents[1]


def kernel_formula(x, numerator, denominator, groups):
    """float64 F(x) on (..., C): each channel with its group's coefficients (a one-row table serves every group)."""
    x = x.double()
    out = torch.empty_like(x)
    size = x.shape[-1] // groups
    for c in range(x.shape[-1]):
        g = c // size
        a = numerator[g if numerator.shape[0] > 1 else 0].double()
        b = denominator[g if denominator.shape[0] > 1 else 0].double()
        v = x[..., c]
        p = sum(a[k] * v ** k for k in range(6))
        q = 1 + sum(b[k].abs() * v.abs() ** (k + 1) for k in range(4))
        out[..., c] = p / q
    return out


def random_rational(c=16, groups=4, share=True, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    act = GroupRational(c, groups, share_numerator=share, compile=False, dtype=dtype)
    with torch.no_grad():
        act.weight_numerator.copy_(torch.randn_like(act.weight_numerator))
        # away from 0: |b| has a kink there (tested on its own below)
        act.weight_denominator.copy_(torch.randn_like(act.weight_denominator).add_(0.1).mul_(0.5))
    return act


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("c,groups", [(16, 4), (24, 8), (5, 1)])
def test_output_is_the_kernel_formula(share, c, groups):
    act = random_rational(c, groups, share)
    x = torch.randn(3, 7, c, dtype=torch.float64) * 2
    torch.testing.assert_close(act(x), kernel_formula(x, act.weight_numerator, act.weight_denominator, groups),
                               rtol=1e-12, atol=1e-12)
    # Not the pure-torch fallback of KAT's repository, whose Q keeps the sign of odd powers of x.
    a, b = act.weight_numerator.detach(), act.weight_denominator.detach()
    xv = x[..., :1]
    fallback = sum(a[0, k] * xv ** k for k in range(6)) / (1 + sum(b[0, k].abs() * xv ** (k + 1) for k in range(4)))
    assert not torch.allclose(act(x)[..., :1], fallback)


def test_groups_are_contiguous_channel_blocks():
    act = random_rational(16, 4, share=True)
    x = torch.randn(9, 16, dtype=torch.float64)
    before = act(x).detach()
    with torch.no_grad():
        act.weight_denominator[2] += 0.5
    changed = (act(x).detach() != before).any(0)
    assert changed.tolist() == [c // 4 == 2 for c in range(16)]
    assert act.weight_numerator.shape == (1, 6) and act.weight_denominator.shape == (4, 4)


def test_paper_text_option_has_one_numerator_per_group_and_a_shared_denominator():
    act = random_rational(16, 4, share=False)
    assert act.weight_numerator.shape == (4, 6) and act.weight_denominator.shape == (1, 4)
    x = torch.randn(9, 16, dtype=torch.float64)
    before = act(x).detach()
    with torch.no_grad():
        act.weight_numerator[1, 3] += 0.5
    assert (act(x).detach() != before).any(0).tolist() == [c // 4 == 1 for c in range(16)]
    with torch.no_grad():
        act.weight_denominator[0, 0] += 0.5
    assert (act(x).detach() != before).all()


@pytest.mark.parametrize("share", [True, False])
def test_gradcheck_x_numerator_denominator(share):
    act = random_rational(8, 2, share)
    x = (torch.randn(4, 8, dtype=torch.float64) + 0.05).requires_grad_()  # no exact 0 (kink of |x|)
    a = act.weight_numerator.detach().clone().requires_grad_()
    b = act.weight_denominator.detach().clone().requires_grad_()
    f = lambda x, a, b: group_rational(x, a, b, 2, compile=False)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, a, b))
    assert torch.autograd.gradgradcheck(f, (x, a, b))  # create_graph backward: Hessian-vector products


def test_gradient_at_zero_denominator_is_the_kernels_one_sided_derivative():
    """identity init: b = 0. KAT's kernels take d|b|/db = +1 there, so the denominators train from 0."""
    act = GroupRational(8, 2, mode="identity", compile=False, dtype=torch.float64)
    with torch.no_grad():
        act.weight_numerator.copy_(torch.tensor([[0.1, 1.0, 0.3, 0.2, 0.0, 0.05]]))
    x = torch.randn(5, 8, dtype=torch.float64)
    act(x).sum().backward()
    eps = 1e-7
    for g in range(2):
        for k in range(4):
            b = act.weight_denominator.detach().clone()
            b[g, k] = eps
            right = (kernel_formula(x, act.weight_numerator.detach(), b, 2).sum()
                     - kernel_formula(x, act.weight_numerator.detach(), act.weight_denominator.detach(), 2).sum()) / eps
            assert act.weight_denominator.grad[g, k].item() == pytest.approx(right.item(), rel=1e-5)
    assert (act.weight_denominator.grad != 0).all()  # torch's sign(0) = 0 would leave them at 0 for good


def test_init_modes_reproduce_their_functions():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64).unsqueeze(1).expand(-1, 8)

    def curve(mode):
        act = GroupRational(8, 8, mode=mode, compile=False, dtype=torch.float64)
        assert (act.weight_numerator == torch.tensor(INIT_COEFFICIENTS[mode][0], dtype=torch.float64)).all()
        assert (act.weight_denominator == torch.tensor(INIT_COEFFICIENTS[mode][1], dtype=torch.float64)).all()
        with torch.no_grad():
            return act(x)[:, 0], x[:, 0]

    y, v = curve("identity")
    assert torch.equal(y, v)
    y, v = curve("swish")
    assert (y - v * torch.sigmoid(v)).abs().max() < 2e-6  # the fit's accuracy (1.2e-6)
    y, v = curve("gelu_old")
    assert (y - F.gelu(v)).abs().max() < 5e-3
    # init.json's "gelu" was fitted with fit.py's denominator 1 + |sum_k b_k x^(k+1)|: GELU there, not under the
    # kernels' 1 + sum_k |b_k| |x|^(k+1), which is what KAT's gelu models (and this layer) compute.
    y, v = curve("gelu")
    a, b = (torch.tensor(t, dtype=torch.float64) for t in INIT_COEFFICIENTS["gelu"])
    fit = sum(a[k] * v ** k for k in range(6)) / (1 + sum(b[k] * v ** (k + 1) for k in range(4)).abs())
    assert (fit - F.gelu(v)).abs().max() < 5e-3
    assert (y - F.gelu(v)).abs().max() > 1.0 and y[-1].item() == pytest.approx(1.531, abs=1e-3)


def test_coefficients_are_init_json():
    """The constants against KAT's file when the fetched repository is at hand (skipped otherwise)."""
    path = Path("/work/.mirror/Adamdad+rational_kat_cu/repo")
    if not path.exists():
        pytest.skip("Adamdad/rational_kat_cu not fetched here")
    text = subprocess.run(["git", "-C", str(path), "show", "HEAD:kat_rational/init.json"], capture_output=True,
                          text=True, check=True).stdout
    data = json.loads(text)
    for mode, (num, den) in INIT_COEFFICIENTS.items():
        assert list(num) == data[mode]["init_w_numerator"] and list(den) == data[mode]["init_w_denominator"]


def test_bf16_autocast_keeps_the_rational_in_float32():
    act = random_rational(16, 4, dtype=torch.float32)
    x = torch.randn(64, 16) * 2
    want = act(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = act(x)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    # A bf16 input: computed in float32, rounded once to bf16 at the end.
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = act(xb)
    ref = kernel_formula(xb.detach(), act.weight_numerator.detach(), act.weight_denominator.detach(), 4)
    assert yb.dtype == torch.bfloat16
    assert ((yb.double() - ref).abs() <= ref.abs() * 2.0 ** -8 + 1e-30).all()
    yb.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and act.weight_numerator.grad.dtype == torch.float32


def test_mlp_under_autocast_is_close_to_float32():
    torch.manual_seed(0)
    mlp = GRKANMlp(32, 128, compile=False)
    x = torch.randn(4, 9, 32)
    want = mlp(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mlp(x)
    assert (got.float() - want).abs().max() < 0.02 * want.abs().max()


KAT_BLOCK_KEYS = ["fc1.weight", "fc1.bias", "act1.weight_numerator", "act1.weight_denominator",
                  "act2.weight_numerator", "act2.weight_denominator", "fc2.weight", "fc2.bias"]


def kat_state_dict(dim, hidden, seed=0):
    """Random values under the keys and shapes KAT's `KAN` (katransformer.py) and `KAT_Group` give them."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"fc1.weight": (hidden, dim), "fc1.bias": (hidden,), "act1.weight_numerator": (1, 6),
              "act1.weight_denominator": (8, 4), "act2.weight_numerator": (1, 6), "act2.weight_denominator": (8, 4),
              "fc2.weight": (dim, hidden), "fc2.bias": (dim,)}
    return {k: torch.randn(shapes[k], generator=g) * 0.3 for k in KAT_BLOCK_KEYS}


def test_mlp_keys_are_kats():
    mlp = GRKANMlp(16, 64)
    assert list(mlp.state_dict()) == KAT_BLOCK_KEYS
    assert {k: tuple(v.shape) for k, v in mlp.state_dict().items()} == {
        k: tuple(v.shape) for k, v in kat_state_dict(16, 64).items()}
    assert mlp.act1.mode == "identity" and mlp.act2.mode == "swish"
    assert GRKANMlp(16, 64, mode="gelu").act2.mode == "gelu"
    layer = GRKANLayer(16, 8)
    assert list(layer.state_dict()) == ["act.weight_numerator", "act.weight_denominator", "fc.weight", "fc.bias"]


def test_a_kat_state_dict_loads_strictly_and_gives_the_formula():
    sd = kat_state_dict(16, 64)
    mlp = GRKANMlp(16, 64, compile=False)
    mlp.load_state_dict(sd, strict=True)
    x = torch.randn(3, 5, 16)
    h = kernel_formula(x, sd["act1.weight_numerator"], sd["act1.weight_denominator"], 8)
    h = h @ sd["fc1.weight"].double().T + sd["fc1.bias"].double()
    h = kernel_formula(h, sd["act2.weight_numerator"], sd["act2.weight_denominator"], 8)
    want = h @ sd["fc2.weight"].double().T + sd["fc2.bias"].double()
    torch.testing.assert_close(mlp(x).double(), want, rtol=1e-4, atol=1e-5)


def test_dropout_sits_after_each_rational_as_in_kat():
    mlp = GRKANMlp(16, 64, drop=(1.0, 0.0), compile=False).train()
    with torch.no_grad():
        mlp.fc1.bias.normal_()
        mlp.fc2.bias.normal_()
    x = torch.randn(2, 16)
    want = mlp.fc2(mlp.act2(mlp.fc1.bias.expand(2, -1)))  # act1's output dropped: fc1 sees zeros
    torch.testing.assert_close(mlp(x), want)
    mlp = GRKANMlp(16, 64, drop=(0.0, 1.0), compile=False).train()
    torch.testing.assert_close(mlp(x), mlp.fc2.bias.expand(2, -1))  # act2's output dropped, none after fc2


def test_use_conv_takes_channels_first():
    torch.manual_seed(0)
    mlp = GRKANMlp(16, 32, use_conv=True, compile=False)
    x = torch.randn(2, 16, 3, 5)
    got = mlp(x)
    mlp.use_conv = False
    torch.testing.assert_close(got, mlp(x.movedim(1, -1)).movedim(-1, 1))


def test_timm_mlp_keywords_and_norm_layer():
    mlp = GRKANMlp(16, 32, 24, torch.nn.GELU, torch.nn.LayerNorm, (True, False), (0.0, 0.0), False, None,
                   torch.float32)
    assert mlp.fc2.bias is None and mlp.fc2.out_features == 24 and isinstance(mlp.norm, torch.nn.LayerNorm)
    assert list(mlp.state_dict())[4:6] == ["norm.weight", "norm.bias"]  # where KAT registers its norm
    assert mlp(torch.randn(3, 16)).shape == (3, 24)


def test_torch_compile_of_the_mlp_equals_eager():
    torch.manual_seed(0)
    mlp = GRKANMlp(16, 64, compile=False)
    x = torch.randn(6, 16, requires_grad=True)
    want = mlp(x)
    want_grads = torch.autograd.grad(want.square().sum(), [x, *mlp.parameters()])
    got = torch.compile(mlp, fullgraph=True)(x)
    got_grads = torch.autograd.grad(got.square().sum(), [x, *mlp.parameters()])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compiled_kernels_equal_the_eager_ones(compiled_kernels):
    act = random_rational(16, 4, dtype=torch.float32)
    x = torch.randn(33, 16, requires_grad=True)
    grads = {}
    for compile in (False, True):
        act.compile = compile
        y = act(x)
        grads[compile] = (y, *torch.autograd.grad(y.sin().sum(), [x, *act.parameters()]))
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    from kanvision.kinds.compile import compile_failures, kernel_graphs

    ran = {key[1] for key in kernel_graphs() if key[0] == "kanvision.kinds.grkan_kernels"}
    assert ran == {"rational_forward", "rational_backward"}  # the compiled kernels ran, no eager fallback
    assert not [k for k in compile_failures() if k[0] == "kanvision.kinds.grkan_kernels"]


TRITON_SCRIPT = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels run in numpy on the CPU
import torch
from kanvision.kinds import grkan_triton
cases = torch.load(sys.argv[1])
out = []
for x, a, b, groups, grad in cases:
    out.append((grkan_triton.forward(x, a, b, groups), *grkan_triton.backward(grad, x, a, b, groups)))
torch.save(out, sys.argv[2])
"""


@pytest.mark.slow
def test_triton_kernels_under_the_interpreter(tmp_path):
    """grkan_triton's forward/backward on CPU tensors (TRITON_INTERPRET=1 in a subprocess) against the formula,
    with masked tiles (group sizes 3 and 24, row counts not multiples of the tile), both sharing layouts, bf16."""
    torch.manual_seed(0)
    cases = []
    for n, c, groups, share, dtype in [(37, 24, 8, True, torch.float32), (5, 96, 2, False, torch.float32),
                                       (19, 192, 8, True, torch.bfloat16), (3, 3, 1, True, torch.float32)]:
        a = torch.randn(1 if share else groups, 6) * 0.5
        b = torch.randn(groups if share else 1, 4) * 0.5
        cases.append((torch.randn(n, c).to(dtype), a, b, groups, torch.randn(n, c).to(dtype)))
    torch.save(cases, tmp_path / "in.pt")
    subprocess.run([sys.executable, "-c", TRITON_SCRIPT, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                   check=True, cwd=ROOT, timeout=300)
    results = torch.load(tmp_path / "out.pt")
    for (x, a, b, groups, grad), (y, gx, ga, gb) in zip(cases, results):
        xd, ad, bd = (t.double().requires_grad_() for t in (x, a, b))
        want = kernel_formula(xd, ad, bd, groups)
        want.backward(grad.double())
        assert y.dtype == gx.dtype == x.dtype and ga.shape == a.shape and gb.shape == b.shape
        for got, ref in ((y, want.detach()), (gx, xd.grad)):
            if x.dtype == torch.bfloat16:  # float32 arithmetic, one rounding to bf16 at the store: within 1 ulp
                # (the interpreter's bf16 conversion truncates where the GPU rounds to nearest)
                # (plus float32 cancellation where an input gradient is ~0)
                assert ((got.double() - ref).abs() <= ref.abs() * 2.0 ** -7 + 1e-6 * ref.abs().max()).all()
            else:
                assert (got.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
        for got, ref in ((ga, ad.grad), (gb, bd.grad)):
            assert (got.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("kw", [{}, {"groups": 4}, {"share_numerator": False}, {"bias": False, "groups": 2}])
def test_parameter_formula_equals_the_built_layer(kw):
    with torch.device("meta"):
        layer = GRKANLayer(16, 24, **kw)
    assert sum(p.numel() for p in layer.parameters()) == KIND.params(16, 24, kw)
    assert KIND.params(192, 192, {}) == 6 + 4 * 8 + 192 * 192 + 192


def test_kat_tiny_parameter_count_and_block_keys():
    """timm's DeiT-T with GRKANMlp as its mlp_layer is KAT-T: 5,717,416 + 12 x 76 = 5,718,328 parameters."""
    with torch.device("meta"):
        deit = timm.create_model("deit_tiny_patch16_224")
        kat = timm.create_model("deit_tiny_patch16_224", mlp_layer=GRKANMlp)
    assert sum(p.numel() for p in deit.parameters()) == 5_717_416
    assert sum(p.numel() for p in kat.parameters()) == 5_718_328
    assert sum(p.numel() for p in kat.blocks[0].mlp.parameters()) == 295_948
    assert [k for k in kat.state_dict() if k.startswith("blocks.0.mlp.")] == ["blocks.0.mlp." + k for k in
                                                                                KAT_BLOCK_KEYS]


def test_timm_vit_init_keeps_the_rationals_and_gives_the_linears_kats_init():
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", mlp_layer=GRKANMlp, depth=2, num_classes=10)
    mlp = model.blocks[1].mlp
    for act, mode in ((mlp.act1, "identity"), (mlp.act2, "swish")):
        num, den = (torch.tensor(t) for t in INIT_COEFFICIENTS[mode])
        assert torch.equal(act.weight_numerator[0], num) and (act.weight_denominator == den).all()
    # KAT's effective init of fc1/fc2 (its kaiming draw is overwritten): trunc_normal(std 0.02), zero bias.
    for fc in (mlp.fc1, mlp.fc2):
        assert fc.weight.std().item() == pytest.approx(0.02, rel=0.05) and not fc.bias.any()


def test_meta_build_and_forward():
    with torch.device("meta"):
        mlp = GRKANMlp(16, 64)
        layer = GRKANLayer(16, 8)
        assert mlp(torch.empty(2, 5, 16)).shape == (2, 5, 16)
        assert layer(torch.empty(3, 16)).shape == (3, 8)
    assert mlp.act1.weight_numerator.is_meta


def test_record_flops_and_memory():
    layer = GRKANLayer(16, 12, compile=False)
    mlp = GRKANMlp(16, 64, compile=False)
    assert KIND.basis_flops(layer) == RATIONAL_FLOPS == 20
    assert KIND.basis_flops(mlp) == 20 * (16 + 64) // 16
    for module in (layer, mlp):
        sizes = []
        for n in (64, 128):
            x = torch.randn(n, 16, requires_grad=True)
            sizes.append(saved_tensor_bytes(module, lambda: module(x))[0])
        assert (sizes[1] - sizes[0]) / 64 / 4 == KIND.memory(module)
    assert KIND.memory(layer) == 32 and KIND.memory(mlp) == 160


@pytest.mark.parametrize("build,match", [
    (lambda: GroupRational(12, 8), "groups must divide num_features"),
    (lambda: GroupRational(16, 8, mode="relu"), "mode must be one of"),
    (lambda: GroupRational(16, 0), "groups must be a positive integer"),
    (lambda: GroupRational(16, 8, share_numerator="yes"), "share_numerator must be True or False"),
    (lambda: GRKANMlp(16, 32, mode="identity"), "mode must be one of"),
    (lambda: GRKANLayer(16, 8, init="lecun"), "init must be 'default'"),
])
def test_bad_arguments_are_one_clear_line(build, match):
    with pytest.raises(ValueError, match=match) as e:
        build()
    assert "\n" not in str(e.value)


def test_wrong_width_is_refused():
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 16\)"):
        GroupRational(16)(torch.randn(2, 8))


def test_reference_and_function_agree_including_at_zero():
    act = random_rational(8, 2)
    x = torch.tensor([[0.0, -0.0, 1e-3, -1e-3, 2.0, -2.0, 0.5, -3.0]], dtype=torch.float64, requires_grad=True)
    g1 = torch.autograd.grad(act(x).sum(), [x, *act.parameters()])
    g2 = torch.autograd.grad(rational_reference(x, act.weight_numerator, act.weight_denominator, 2).sum(),
                             [x, *act.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # At x = 0 (a kink of |x| when a0 |b0| != 0) the kernels take sign(0) = +1: the derivative from the right.
    a, b = act.weight_numerator.detach()[0], act.weight_denominator.detach()[0]
    assert g1[0][0, 0].item() == pytest.approx((a[1] - a[0] * b[0].abs()).item(), rel=1e-12)
    assert math.isfinite(g1[0].abs().sum().item())


def test_kat_tiny_is_the_zoo_deit_with_grkan_and_loads_kat_files_through_timm(tmp_path):
    """kan_deit_tiny_patch16_224 with kan='grkan' is KAT-T (5,718,328 parameters at 1,000 classes), and a file in
    KAT's layout ({'model': state_dict}, KAT's key names) loads through timm's usual pretrained path."""
    import timm

    import kanvision  # noqa: F401  registers the zoo

    torch.manual_seed(0)
    model = timm.create_model("kan_deit_tiny_patch16_224", kan="grkan", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 5_718_328
    sd = model.state_dict()
    assert {"blocks.0.mlp.act1.weight_numerator", "blocks.0.mlp.act1.weight_denominator", "blocks.0.mlp.fc1.weight",
            "blocks.0.mlp.act2.weight_numerator", "blocks.11.mlp.fc2.bias"} <= set(sd)
    kat = {k: torch.randn_like(v) * 0.02 if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path / "kat_tiny_swish_patch16_224.pth"
    torch.save({"model": kat}, path)
    # The cfg's classes are CIFAR-100's: the overlay says the file's (the model then takes them from the cfg).
    loaded = timm.create_model("kan_deit_tiny_patch16_224", kan="grkan", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=1000))
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, kat[k]), k
    with pytest.raises(ValueError, match="1000-class head, the model 100: pass pretrained_cfg_overlay"):
        timm.create_model("kan_deit_tiny_patch16_224", kan="grkan", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
