"""ChebyKAN kind: exact to SynodicMonth/ChebyKAN ChebyKANLayer (formula, keys, init, parameter count); the
recurrence gives finite gradients where the published cos(d acos t) form gives NaN; memory, compile, autocast, meta."""
import math

import pytest
import torch

from kanvision.kinds.chebykan import KIND, ChebyKANLayer
from kanvision.kinds.compile import compile_failures, kernel_graphs


def published_forward(sd, x):
    """ChebyKANLayer.forward term by term (float64): y_o = sum_{i,d} C[i, o, d] cos(d acos(tanh x_i))."""
    coeffs = sd["cheby_coeffs"]
    din, dout, k = coeffs.shape
    out = torch.zeros(x.shape[0], dout, dtype=torch.float64)
    for i in range(din):
        theta = torch.acos(torch.tanh(x[:, i]))
        for d in range(k):
            out += torch.cos(d * theta).unsqueeze(1) * coeffs[i, :, d]
    return out


def published_autograd(coeffs, x):
    """The published vectorised evaluation (tanh -> acos -> times arange -> cos -> einsum), for its gradients."""
    k = coeffs.shape[-1]
    t = torch.tanh(x).view(-1, coeffs.shape[0], 1).expand(-1, -1, k)
    return torch.einsum("bid,iod->bo", (t.acos() * torch.arange(k)).cos(), coeffs)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("degree", [0, 1, 2, 4, 7])
def test_published_state_dict_loads_and_matches_term_by_term_forward(impl, degree):
    din, dout = 4, 3
    g = torch.Generator().manual_seed(degree)
    sd = {"cheby_coeffs": torch.randn(din, dout, degree + 1, generator=g, dtype=torch.float64),
          "arange": torch.arange(0, degree + 1, 1)}
    layer = ChebyKANLayer(din, dout, degree, impl=impl, compile=False, dtype=torch.float64)
    layer.load_state_dict(sd, strict=True)
    x = torch.randn(6, din, dtype=torch.float64, generator=g) * 1.5
    assert torch.allclose(layer(x), published_forward(sd, x), atol=1e-12, rtol=0)


def test_keys_defaults_and_parameter_formula():
    layer = ChebyKANLayer(192, 192, compile=False)
    assert layer.degree == 4 and KIND.defaults == {"degree": 4}
    assert set(layer.state_dict()) == {"cheby_coeffs", "arange"}
    assert layer.arange.dtype == torch.int64 and torch.equal(layer.arange, torch.arange(5))
    assert tuple(layer.cheby_coeffs.shape) == (192, 192, 5)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 192 * 192 * 5 == KIND.params(192, 192, {})
    for degree in (0, 2, 6):
        built = ChebyKANLayer(7, 5, degree)
        assert sum(p.numel() for p in built.parameters()) == KIND.params(7, 5, {"degree": degree})
    assert layer(torch.randn(2, 3, 192)).shape == (2, 3, 192)  # leading dimensions kept (published: flattened)


def test_init_is_published_draw_for_draw_and_its_statistics():
    torch.manual_seed(21)
    layer = ChebyKANLayer(64, 48, 4)
    torch.manual_seed(21)
    want = torch.empty(64, 48, 5)
    torch.nn.init.normal_(want, mean=0.0, std=1 / (64 * 5))
    assert torch.equal(layer.cheby_coeffs, want)
    c = layer.cheby_coeffs
    # The standard deviation (not the variance) is 1 / (in (degree + 1)) = 1/320.
    assert c.std().item() == pytest.approx(1 / 320, rel=0.03) and c.mean().abs() < 1e-4


def test_recurrence_agrees_with_published_form_in_float64():
    torch.manual_seed(22)
    layer = ChebyKANLayer(8, 5, 6, compile=False, dtype=torch.float64)
    x = torch.randn(200, 8, dtype=torch.float64) * 3  # |tanh x| < 1 here
    assert torch.allclose(layer(x), published_autograd(layer.cheby_coeffs, x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype,big", [(torch.float32, 10.0), (torch.float64, 30.0)])
def test_saturated_tanh_published_gradient_is_nan_ours_is_finite(dtype, big):
    torch.manual_seed(23)
    layer = ChebyKANLayer(3, 2, 4, compile=False, dtype=dtype)
    x = torch.tensor([[big, -big, 0.3], [0.5, big, -0.7]], dtype=dtype)
    assert torch.tanh(x).abs().max() == 1  # tanh saturated to exactly +-1
    xp = x.clone().requires_grad_()
    coeffs = layer.cheby_coeffs.detach().clone().requires_grad_()
    published_autograd(coeffs, xp).sum().backward()
    assert not torch.isfinite(xp.grad).all()  # d/dt acos(t) = -1 / sqrt(1 - t^2) is infinite at t = +-1
    xo = x.clone().requires_grad_()
    layer(xo).sum().backward()
    assert torch.isfinite(xo.grad).all() and torch.isfinite(layer.cheby_coeffs.grad).all()
    assert (xo.grad[x.abs() == big] == 0).all()  # dtanh/dx = 1 - t^2 = 0 there
    # The values: the coefficient gradient sum_b T_d(t_bi) never goes through d acos / dt, so the published one is
    # finite everywhere and ours equals it; the input gradient equals the published one where tanh is not saturated.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert torch.isfinite(coeffs.grad).all()
    assert torch.allclose(layer.cheby_coeffs.grad, coeffs.grad, **tol)
    inside = x.abs() != big
    assert torch.allclose(xo.grad[inside], xp.grad[inside], **tol)
    # Where tanh is not saturated the two agree (values and coefficient gradients are finite in both).
    assert torch.allclose(layer(x), published_autograd(layer.cheby_coeffs, x), atol=1e-5 if dtype == torch.float32
                          else 1e-12)


@pytest.mark.parametrize("degree", [0, 1, 4])
def test_gradcheck_float64(degree):
    torch.manual_seed(24)
    layer = ChebyKANLayer(4, 3, degree, compile=False, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    c = layer.cheby_coeffs.detach().clone().requires_grad_()

    def f(inp, coeffs):
        return torch.func.functional_call(layer, {"cheby_coeffs": coeffs}, (inp,))

    assert torch.autograd.gradcheck(f, (x, c))


def test_second_derivatives_gradgradcheck():
    # create_graph backwards (Hessian-vector products) differentiate the plain recurrence inside the Function.
    torch.manual_seed(28)
    layer = ChebyKANLayer(2, 2, 3, compile=False, dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    c = layer.cheby_coeffs.detach().clone().requires_grad_()
    def f(inp, coeffs):
        return torch.func.functional_call(layer, {"cheby_coeffs": coeffs}, (inp,))

    assert torch.autograd.gradgradcheck(f, (x, c))


def test_fast_equals_reference_float32():
    torch.manual_seed(25)
    fast, ref = ChebyKANLayer(24, 16, compile=False), ChebyKANLayer(24, 16, impl="reference")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(50, 24) * 2
    out = []
    for layer in (fast, ref):
        xx = x.clone().requires_grad_()
        y = layer(xx)
        y.backward(torch.sin(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape))
        out.append((y.detach(), xx.grad, layer.cheby_coeffs.grad))
    for a, b in zip(*out):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())


def test_memory_model_is_what_autograd_saves(saved_floats):
    n, din = 64, 12
    layer = ChebyKANLayer(din, 10, compile=False)
    assert KIND.memory(layer) == din
    assert saved_floats(layer, torch.randn(n, din, requires_grad=True)) == n * KIND.memory(layer)
    ref = ChebyKANLayer(din, 10, impl="reference")
    assert saved_floats(ref, torch.randn(n, din, requires_grad=True)) >= n * din * 5  # the basis


def test_basis_flops_and_markers():
    assert KIND.basis_flops(ChebyKANLayer(4, 4)) == 10
    assert KIND.basis_flops(ChebyKANLayer(4, 4, degree=1)) == 1
    keys = {"fc1." + k for k in ChebyKANLayer(4, 4).state_dict()}
    assert all(any(k.endswith(m) for k in keys) for m in KIND.key_markers)


def test_meta_device_build_and_forward():
    layer = ChebyKANLayer(192, 96, device="meta")
    assert layer.cheby_coeffs.is_meta and layer.arange.is_meta
    assert layer(torch.randn(8, 192, device="meta")).shape == (8, 96)


def test_bf16_autocast_close_to_float32():
    torch.manual_seed(26)
    layer = ChebyKANLayer(32, 24, compile=False)
    x = torch.randn(40, 32)
    want = layer(x)
    xx = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(xx)
    assert y.dtype == torch.bfloat16
    assert (y.float() - want).abs().max() <= 0.03 * want.abs().max()
    y.float().sum().backward()
    assert xx.grad.dtype == torch.float32 and layer.cheby_coeffs.grad.dtype == torch.float32
    assert torch.isfinite(xx.grad).all()
    # The values: the float32 gradients, to bf16 rounding (same bar as the output's).
    x32 = x.clone().requires_grad_()
    coeffs_bf16, layer.cheby_coeffs.grad = layer.cheby_coeffs.grad, None
    layer(x32).sum().backward()
    assert (xx.grad - x32.grad).abs().max() <= 0.03 * x32.grad.abs().max()
    assert (coeffs_bf16 - layer.cheby_coeffs.grad).abs().max() <= 0.03 * layer.cheby_coeffs.grad.abs().max()


@pytest.mark.parametrize("args,kwargs,match", [
    ((4, 4), dict(degree=-1), "degree"), ((4, 4), dict(degree=2.5), "degree"), ((0, 4), {}, "in_features"),
    ((4, 4), dict(impl="cuda"), "impl"),
])
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChebyKANLayer(*args, **kwargs)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        ChebyKANLayer(4, 4)(torch.randn(3, 5))


@pytest.mark.slow
def test_compiled_kernels_and_torch_compile_equal_eager(compiled_kernels):
    torch.manual_seed(27)
    eager = ChebyKANLayer(16, 12, compile=False)
    kernels = ChebyKANLayer(16, 12, compile=True)
    kernels.load_state_dict(eager.state_dict())
    whole = torch.compile(eager)
    x = torch.randn(37, 16) * 2
    results = []
    for layer in (eager, kernels, whole):
        eager.cheby_coeffs.grad = kernels.cheby_coeffs.grad = None
        xx = x.clone().requires_grad_()
        y = layer(xx)
        y.pow(2).sum().backward()
        owner = kernels if layer is kernels else eager
        results.append((y.detach(), xx.grad, owner.cheby_coeffs.grad))
    ours = lambda table: [k for k in table if k[0] == "kanvision.kinds.chebykan"]  # noqa: E731
    assert not ours(compile_failures()) and len(ours(kernel_graphs())) >= 2
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())
    assert math.isfinite(results[0][0].sum().item())
