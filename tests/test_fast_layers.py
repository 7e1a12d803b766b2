"""Fast KAN paths == reference paths: values, gradients (float64 gradcheck), switches, memory, compile."""
import warnings

import pytest
import torch
from torch import nn

from kanvision.layers import BSplineKAN, KanMlp, RSWAFKAN, b_spline_basis, uniform_knots
from kanvision.kinds.bspline import basis as bspline_basis
from kanvision.kinds.bspline import fast as bspline_fast
from kanvision.kinds.bspline import local as bspline_local
from kanvision.kinds.rswaf import fast as rswaf_fast
from kanvision.kinds.compile import compile_failures
from kanvision.kinds.workspace import release_scratch, scratch, scratch_bytes
from marks import slow_after


def pair(cls, *args, **kwargs):
    fast = cls(*args, impl="fast", **kwargs)
    ref = cls(*args, impl="reference", **kwargs)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def values_and_grads(layer, x):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    g = torch.sin(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape)  # fixed, non-trivial cotangent
    y.backward(g)
    return y.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}


def assert_same(fast, ref, x, atol):
    yf, gxf, gpf = values_and_grads(fast, x)
    yr, gxr, gpr = values_and_grads(ref, x)
    assert (yf - yr).abs().max() <= atol
    assert (gxf - gxr).abs().max() <= atol * 10
    for name in gpr:
        assert (gpf[name] - gpr[name]).abs().max() <= atol * 10 * max(1.0, gpr[name].abs().max()), name


def test_uniform_local_coefficients_are_a_partition_of_unity():
    for k in range(1, 6):
        c = bspline_basis.uniform_local_coefficients(k)
        want = torch.zeros(k + 1, dtype=torch.float64)
        want[0] = 1
        assert torch.allclose(c.sum(0), want, atol=1e-14)  # sum_q B_q(f) == 1 for every f


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("grid_size", [3, 5, 10])
def test_uniform_basis_float32_within_1e6_including_outside(order, grid_size):
    torch.manual_seed(order * 100 + grid_size)
    grid = uniform_knots(6, grid_size, order, (-1, 1), dtype=torch.float32)
    x = torch.rand(4000, 6) * 8 - 4  # far beyond the extended grid on both sides
    x[:12] = grid[0, :12].unsqueeze(1).expand(-1, 6) if grid.size(1) >= 12 else x[:12]
    x[-1] = grid[:, -1]  # last knot: outside (half-open)
    spec = bspline_local.SplineSpec(grid, order, bspline_basis.grid_is_uniform(grid))
    assert spec.uniform
    dense = bspline_local.features_eager(x, spec, None, "silu")
    ref = b_spline_basis(x, grid, order)
    assert (dense[..., 1:] - ref).abs().max() <= 1e-6
    assert (dense[..., 0] == torch.nn.functional.silu(x)).all()
    assert (dense[-1, :, 1:] == 0).all()


def test_layer_detects_uniform_and_non_uniform_grids():
    torch.manual_seed(0)
    layer = BSplineKAN(8, 4, dtype=torch.float64)
    assert layer.grid_uniform and layer.fast_spec().uniform
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.update_grid(torch.randn(256, 8, dtype=torch.float64) * 0.5)
    assert not layer.grid_uniform and not layer.fast_spec().uniform
    layer.load_state_dict(state)
    assert layer.grid_uniform and layer.fast_spec().uniform
    layer.float()
    assert layer.fast_spec().grid.dtype == torch.float32 and layer.grid_uniform
    # Knots rounded to float32 and cast up are not uniform at float64 precision: the exact general path serves them.
    assert not BSplineKAN(8, 4).double().grid_uniform
    # Knots edited in place by hand are noticed on the next eager forward.
    layer = BSplineKAN(8, 4)
    with torch.no_grad():
        layer.grid[:, 3] += 0.05
    layer(torch.randn(2, 8))
    assert not layer.grid_uniform


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("grid_size", slow_after([3, 5, 10]))
@pytest.mark.parametrize("uniform", [True, False])
def test_gradcheck_float64_against_reference(order, grid_size, uniform):
    torch.manual_seed(order * 10 + grid_size)
    fast, ref = pair(BSplineKAN, 2, 2, grid_size=grid_size, spline_order=order, dtype=torch.float64)
    x = torch.rand(4, 2, dtype=torch.float64) * 3.2 - 1.6
    if not uniform:
        fast.update_grid(torch.randn(64, 2, dtype=torch.float64) * 0.6)
        ref.load_state_dict(fast.state_dict())
    assert fast.grid_uniform == uniform
    names = [n for n, _ in fast.named_parameters()]

    def run(layer):
        return lambda inp, *ws: torch.func.functional_call(layer, dict(zip(names, ws)), (inp,))

    inputs = (x.requires_grad_(), *[p.detach().clone().requires_grad_() for p in fast.parameters()])
    assert torch.autograd.gradcheck(run(fast), inputs)
    # ... and the analytic gradients are the reference path's.
    gf = torch.autograd.grad(run(fast)(*inputs).sum(), inputs)
    gr = torch.autograd.grad(run(ref)(*inputs).sum(), inputs)
    for a, b in zip(gf, gr):
        assert torch.allclose(a, b, atol=1e-12)


def test_float32_realistic_shape_values_and_grads():
    torch.manual_seed(1)
    fast, ref = pair(BSplineKAN, 192, 192)
    x = torch.randn(512, 192) * 1.2  # 2 images x 256 tokens; ~40% beyond grid_range, some beyond the knots
    assert_same(fast, ref, x, atol=1e-5)


def test_generic_activation_and_no_scaler():
    torch.manual_seed(2)
    fast, ref = pair(BSplineKAN, 7, 5, base_activation=nn.GELU, enable_standalone_scale_spline=False)
    assert_same(fast, ref, torch.randn(64, 7), atol=1e-5)


def test_fast_path_saves_no_dense_basis():
    torch.manual_seed(3)
    n, din = 512, 16
    sizes = {}
    for impl in ("fast", "reference"):
        layer = BSplineKAN(din, 8, impl=impl)
        params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
        saved = []
        pack = lambda t: saved.append(0 if t.untyped_storage().data_ptr() in params else t.numel()) or t  # noqa: E731
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = layer(torch.randn(n, din, requires_grad=True))
        sizes[impl] = max(saved)
        y.sum().backward()
    assert sizes["fast"] == n * din  # x and the parameters themselves: no (N, in, G + k) tensor
    assert sizes["reference"] >= n * din * 8


def test_hessian_vector_product_through_fast_path():
    torch.manual_seed(4)
    fast, ref = pair(BSplineKAN, 3, 2, dtype=torch.float64)
    x = torch.rand(6, 3, dtype=torch.float64) * 2 - 1
    hv = {}
    for name, layer in (("fast", fast), ("ref", ref)):
        params = list(layer.parameters())
        grads = torch.autograd.grad((layer(x) ** 2).sum(), params, create_graph=True)
        dot = sum((g * torch.ones_like(g)).sum() for g in grads)
        hv[name] = torch.autograd.grad(dot, params)
    for a, b in zip(hv["fast"], hv["ref"]):
        assert torch.allclose(a, b, atol=1e-10)


def test_switches_and_kan_mlp_forwarding():
    with pytest.raises(ValueError, match="impl"):
        BSplineKAN(4, 4, impl="cuda")
    torch.manual_seed(5)
    mlp = KanMlp(6, 10, kind="bspline", impl="reference", compile=False)
    assert mlp.fc1.impl == "reference" and mlp.fc2.impl == "reference"
    fast = KanMlp(6, 10, kind="bspline")
    assert fast.fc1.impl == "fast"
    fast.load_state_dict(mlp.state_dict())
    x = torch.randn(3, 5, 6)
    assert torch.allclose(fast(x), mlp(x), atol=1e-5)
    assert set(BSplineKAN(4, 4, impl="reference").state_dict()) == set(BSplineKAN(4, 4).state_dict())


@pytest.mark.slow
def test_compile_switch_matches_reference_or_warns_once(compiled_kernels):
    torch.manual_seed(6)
    fast, ref = pair(BSplineKAN, 5, 3, compile=True)
    x = torch.randn(40, 5) * 1.5
    before = compile_failures()  # process-wide: earlier tests' variants warned in their own time
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_same(fast, ref, x, atol=1e-5)
        assert_same(fast, ref, x * 0.5, atol=1e-5)
    failed = [w for w in caught if "torch.compile" in str(w.message)]
    new = [k for k in compile_failures() if k not in before]
    assert len(failed) == len(new)  # one warning per variant that failed here, none otherwise


def test_rswaf_fast_equals_reference_float32():
    torch.manual_seed(7)
    fast, ref = pair(RSWAFKAN, 48, 40)
    with torch.no_grad():
        fast.layernorm.weight.uniform_(0.5, 1.5)
        fast.layernorm.bias.uniform_(-0.3, 0.3)
    ref.load_state_dict(fast.state_dict())
    assert_same(fast, ref, torch.randn(2, 256, 48) * 3, atol=1e-5)


@pytest.mark.parametrize("h", [0.33, 1.0])
def test_rswaf_gradcheck_float64_against_reference(h):
    torch.manual_seed(8)
    fast, ref = pair(RSWAFKAN, 2, 2, num_grids=4, denominator=h, dtype=torch.float64)
    names = [n for n, _ in fast.named_parameters()]
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    inputs = (x, *[p.detach().clone().requires_grad_() for p in fast.parameters()])

    def run(layer):
        return lambda inp, *ws: torch.func.functional_call(layer, dict(zip(names, ws)), (inp,))

    assert torch.autograd.gradcheck(run(fast), inputs)
    gf = torch.autograd.grad(run(fast)(*inputs).sum(), inputs)
    gr = torch.autograd.grad(run(ref)(*inputs).sum(), inputs)
    for a, b in zip(gf, gr):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.autograd.gradgradcheck(run(fast), inputs)  # Hessian-vector products stay exact


def test_rswaf_switches_and_trainable_basis_fallback():
    assert RSWAFKAN(4, 3).impl == "fast"
    assert RSWAFKAN(4, 3, train_grid=True).impl == "reference"  # automatic: centres need gradients
    with pytest.raises(ValueError, match="train_grid"):
        RSWAFKAN(4, 3, train_denominator=True, impl="fast")
    with pytest.raises(ValueError, match="impl"):
        RSWAFKAN(4, 3, impl="triton")
    mlp = KanMlp(6, 12, kind="rswaf", impl="reference")
    assert mlp.fc1.impl == mlp.fc2.impl == "reference"
    fast = KanMlp(6, 12, kind="rswaf")
    fast.load_state_dict(mlp.state_dict())
    x = torch.randn(5, 6)
    assert torch.allclose(fast(x), mlp(x), atol=1e-5)
    layer = RSWAFKAN(5, 3)
    saved = []
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(0 if t.untyped_storage().data_ptr() in params else t.numel()) or t, lambda t: t):
        layer(torch.randn(64, 5, requires_grad=True))
    assert max(saved) <= 64 * 5  # LayerNorm's input/output and u, never the (N, in * 8) basis


@pytest.mark.slow
def test_rswaf_compile_switch_matches_reference(compiled_kernels):
    torch.manual_seed(9)
    fast, ref = pair(RSWAFKAN, 5, 3, compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_same(fast, ref, torch.randn(30, 5), atol=1e-5)
    assert len([w for w in caught if "torch.compile" in str(w.message)]) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2, 3])
def test_compiled_bspline_kernels_float32_within_1e6_including_outside(order, compiled_kernels):
    # The compiled kernels evaluate each dense element from its own knot (no gather): same 1e-6 bar as eager.
    torch.manual_seed(order)
    grid = uniform_knots(6, 5, order, (-1, 1), dtype=torch.float32)
    x = torch.rand(3000, 6) * 8 - 4
    x[-1] = grid[:, -1]  # last knot: outside (half-open)
    spec = bspline_local.SplineSpec(grid, order, True)
    ta, tb = spec.dense
    args = (ta, tb, order, True, "silu", True, spec, None)
    dense, slot_major = bspline_fast.features(x, *args, torch.float32)
    assert slot_major  # the compiled kernels write (N, slot, in)
    dense = dense.transpose(1, 2).clone()
    if compile_failures():
        pytest.skip(f"torch.compile unavailable here: {compile_failures()}")
    assert (dense[..., 1:] - b_spline_basis(x, grid, order)).abs().max() <= 1e-6
    assert torch.allclose(dense[..., 0], nn.functional.silu(x), atol=1e-7)
    # Beyond the extended grid every basis is exactly 0 (at the last knot itself, within rounding of 0: the
    # spline is continuous there, and u = (x - g_m) / h may land a ulp below the end of the support).
    far = (x < grid[:, :1].T - 1e-3) | (x > grid[:, -1:].T + 1e-3)
    assert far.any() and (dense[..., 1:][far] == 0).all()
    gbuf = torch.randn_like(dense)
    eager = bspline_local.input_grad_eager(x, gbuf.clone(), spec, None, "silu")
    compiled = bspline_fast.input_grad(x, gbuf.transpose(1, 2).contiguous(), True, *args)
    # Row -1 sits exactly on a knot, where an order-1 spline's derivative jumps: either side is a valid answer.
    assert torch.allclose(compiled[:-1], eager[:-1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_rswaf_kernels_match_tanh_form(compiled_kernels):
    torch.manual_seed(3)
    u = torch.randn(500, 7, dtype=torch.float64) * 3
    centres, inv_h = torch.linspace(-2, 2, 8, dtype=torch.float64), torch.tensor(1 / 0.33, dtype=torch.float64)
    eager_b = rswaf_fast.basis(u, centres, inv_h, compile=False).clone()
    compiled_b = rswaf_fast.basis(u, centres, inv_h, compile=True).clone()
    if compile_failures():
        pytest.skip(f"torch.compile unavailable here: {compile_failures()}")
    assert torch.allclose(compiled_b, eager_b, atol=1e-14)
    gbuf = torch.randn(500, 7, 8, dtype=torch.float64)
    b1, g1 = (t.clone() for t in rswaf_fast.backward(u, gbuf.clone(), centres, inv_h, compile=False))
    b2, g2 = rswaf_fast.backward(u, gbuf.clone(), centres, inv_h, compile=True)
    assert torch.allclose(b2, b1, atol=1e-14) and torch.allclose(g2, g1, atol=1e-12)


def test_scratch_is_reused_grows_and_survives_inference_mode():
    release_scratch()
    a = scratch((4, 5), torch.float32, "cpu")
    assert scratch((2, 10), torch.float32, "cpu").data_ptr() == a.data_ptr()  # same memory, new shape
    assert scratch((4, 5), torch.float32, "cpu", slot=1).data_ptr() != a.data_ptr()
    assert scratch((100,), torch.float32, "cpu").numel() == 100 and scratch_bytes() == (100 + 20) * 4
    # A buffer first made under inference mode (Lightning's validation) must stay writable in training.
    release_scratch()
    layer = BSplineKAN(6, 3)
    with torch.inference_mode():
        layer(torch.randn(8, 6))
    x = torch.randn(8, 6, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # The value: the input gradient of the reference (Cox-de Boor autograd) path with the same weights.
    ref = BSplineKAN(6, 3, impl="reference")
    ref.load_state_dict(layer.state_dict())
    xr = x.detach().clone().requires_grad_()
    ref(xr).sum().backward()
    assert torch.allclose(x.grad, xr.grad, rtol=1e-5, atol=1e-6)
    release_scratch()
    assert scratch_bytes() == 0
