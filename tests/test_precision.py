"""Mixed precision: KAN layers under bf16 / fp16 autocast, eager and compiled kernels, uniform and updated
grids; against float32 with stated tolerances, plus a Lightning `bf16-mixed` fit of every kind.

The design being guarded: basis arithmetic in float32, values rounded once to the autocast dtype, matmul
in that dtype, gradients in each input's dtype."""
import pytest
import torch

from kanvision.cli import main
from kanvision.layers import BSplineKAN, RSWAFKAN
from kanvision.train.module import ImageClassifier
from kanvision.kinds.bspline import dense as bspline_dense
from kanvision.kinds.bspline import local as bspline_local
from kanvision.kinds.bspline.basis import b_spline_basis, uniform_knots
from marks import slow_after

# Relative to the largest float32 value: one rounding of features and weights to the format's 8 (bf16) or
# 11 (fp16) significant bits, accumulated in float32 by the matmul, stays well inside these.
TOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3}


def make(kind, compile, updated):
    torch.manual_seed(0)
    layer = BSplineKAN(24, 16, compile=compile) if kind == "bspline" else RSWAFKAN(24, 16, compile=compile)
    if updated:
        layer.update_grid(torch.randn(512, 24) * 0.7)
        assert not layer.grid_uniform
    return layer


def run(layer, x, dtype=None):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        y = layer(x)
    cot = torch.sin(torch.arange(y.numel(), dtype=torch.float32)).reshape(y.shape)
    y.float().backward(cot)
    return y, x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


def rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("compile", slow_after([False, True]))
@pytest.mark.parametrize("kind,updated", [("bspline", False), ("bspline", True), ("rswaf", False)])
def test_autocast_matches_float32(kind, updated, compile, dtype, request):
    if compile:  # the compiled kernels under autocast, as a user's CPU run has them (tests/conftest.py)
        request.getfixturevalue("compiled_kernels")
    layer = make(kind, compile, updated)
    x = torch.randn(2, 40, 24) * 1.3  # some inputs beyond the grid
    y32, gx32, gp32 = run(layer, x)
    y, gx, gp = run(layer, x, dtype)
    assert y.dtype == dtype  # the matmul ran in the autocast dtype, like nn.Linear under autocast
    assert gx.dtype == torch.float32 and all(g.dtype == torch.float32 for g in gp.values())
    assert rel(y, y32) <= TOL[dtype]
    assert rel(gx, gx32) <= TOL[dtype]
    for name in gp32:
        assert rel(gp[name], gp32[name]) <= TOL[dtype], name


@pytest.mark.parametrize("uniform", [True, False])
def test_low_precision_features_are_the_float32_features_rounded_once(uniform):
    # If the basis arithmetic ran in bfloat16, interval and fraction would be off and this would not be exact.
    torch.manual_seed(1)
    grid = uniform_knots(5, 5, 3, (-1, 1))
    if not uniform:
        grid = grid + torch.rand_like(grid) * 0.01
        grid = grid.sort(-1).values
    x = (torch.rand(300, 5) * 3 - 1.5).to(torch.bfloat16)  # a bf16 activation, as after a bf16 matmul
    spec = bspline_local.SplineSpec(grid, 3, uniform)
    want = torch.cat([torch.nn.functional.silu(x.float()).unsqueeze(-1), b_spline_basis(x.float(), grid, 3)], -1)
    eager = bspline_local.features_eager(x, spec, None, "silu", torch.bfloat16)
    dense = bspline_dense.dense_features(x, *spec.dense, 3, uniform, "silu", torch.bfloat16).transpose(1, 2)
    for got in (eager, dense):
        assert got.dtype == torch.bfloat16
        # Within half a bf16 unit in the last place (2^-8 relative) of the exact value: one rounding.
        assert ((got.float() - want).abs() <= want.abs() * 2 ** -8 * 1.001 + 1e-6).all()
    # The same features computed in bf16 arithmetic miss that bar: the test can tell the two apart.
    naive = b_spline_basis(x, grid.to(torch.bfloat16), 3)
    assert not ((naive.float() - want[..., 1:]).abs() <= want[..., 1:].abs() * 2 ** -8 * 1.001 + 1e-6).all()


def test_input_gradient_keeps_the_input_dtype():
    layer = make("bspline", False, False)
    x = torch.randn(30, 24, dtype=torch.bfloat16, requires_grad=True)  # fc2 of a KanMlp sees fc1's bf16 output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
    # The value: the float32 layer's input gradient at the same (bf16-representable) input, to bf16 rounding.
    x32 = x.detach().float().requires_grad_()
    layer(x32).sum().backward()
    assert rel(x.grad, x32.grad) <= TOL[torch.bfloat16]


@pytest.mark.parametrize("kind", ["bspline", "rswaf"])  # the fast kernels' double backward (test_kinds: every kind)
def test_double_backward_under_autocast(kind):
    # Hessian-vector products (the Hessian analysis) through the fast layer under autocast.
    layer = make(kind, None, False)
    x = torch.randn(16, 24)
    hv = {}
    for dtype in (None, torch.bfloat16):
        params = list(layer.parameters())
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = (layer(x).float() ** 2).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * torch.ones_like(g)).sum() for g in grads)
        hv[dtype] = torch.cat([h.flatten() for h in torch.autograd.grad(dot, params)])
    assert torch.isfinite(hv[torch.bfloat16]).all()
    assert rel(hv[torch.bfloat16], hv[None]) <= 5e-2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "bspline", "rswaf"])
def test_lightning_bf16_mixed_fit(tmp_path, kind, capsys, monkeypatch, write_config):
    # The documented full-size recipes (configs/trainer/ddp.yaml) run bf16-mixed.
    # What would tell bf16 from fp32: the dtype the channel MLP's two layers (KAN layers, or nn.Linear for "none")
    # return inside the Trainer's steps, recorded by forward hooks put on when fit starts.
    seen = []
    on_fit_start = ImageClassifier.on_fit_start

    def hooked_on_fit_start(self):
        on_fit_start(self)
        mlp = self.model.blocks[0].mlp_channels
        for name in ("fc1", "fc2"):
            getattr(mlp, name).register_forward_hook(
                lambda m, inputs, out, name=name: seen.append((name, m.training, inputs[0].dtype, out.dtype)))

    monkeypatch.setattr(ImageClassifier, "on_fit_start", hooked_on_fit_start)
    cfg = write_config(tmp_path, model__kan=kind, data__synthetic_size=48, trainer__precision="bf16-mixed",
                       trainer__max_steps=3, trainer__log_every_n_steps=1, trainer__default_root_dir=str(tmp_path))
    main(["fit", "--config", cfg, "--name=bf16"])
    out = capsys.readouterr().out
    train = [s for s in seen if s[1]]
    assert len(train) == 2 * 3  # fc1 and fc2, one forward each per step
    # Matmuls in bf16: each layer returns bf16 (fp32 would return float32), so fc2 is fed bf16.
    assert {(n, o) for n, _, _, o in seen} == {("fc1", torch.bfloat16), ("fc2", torch.bfloat16)}
    assert {i for n, _, i, _ in seen if n == "fc2"} == {torch.bfloat16}
    assert "val: top-1" in out
    metrics = (tmp_path / "bf16" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    losses = [float(r.split(",")[header.index("train/loss_step")]) for r in metrics[1:]
              if r.split(",")[header.index("train/loss_step")]]
    assert len(losses) == 3 and torch.isfinite(torch.tensor(losses)).all()
