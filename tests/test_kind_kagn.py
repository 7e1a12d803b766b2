"""KAGN kind: exact to IvanDrokin/torch-conv-kan GRAMLayer (formula incl. the beta(n, m) constant, keys, init,
parameter count), exact gradients (beta_weights included), no input cache, memory, compile, autocast, meta."""
import gc
import math
import weakref

import pytest
import torch
from torch import nn

from kanvision.kinds.compile import compile_failures, kernel_graphs
from kanvision.kinds.kagn import KIND, KAGNLayer

PUBLISHED_KEYS = {"beta_weights", "grams_basis_weights", "base_weights", "norm.weight", "norm.bias"}


def silu(v):
    return v / (1 + torch.exp(-v))


def published_forward(sd, x, act=silu, beta=None):
    """GRAMLayer.forward term by term (float64): base_o = sum_i W_b[o, i] act(x_i); z = tanh x;
    P_0 = 1, P_1 = z, P_d = z P_{d-1} - beta(d-1, d) P_{d-2}, beta(n, m) = ((m+n)(m-n) n^2) / (m^2 / (4 n^2 - 1)) w_n;
    y_o = act(LayerNorm_out(base_o + sum_{i,d} C[i, o, d] act(P_d(z_i)))), LayerNorm eps 1e-5, biased variance."""
    beta = beta or (lambda n, m, w: ((m + n) * (m - n) * n ** 2) / (m ** 2 / (4.0 * n ** 2 - 1.0)) * w[n])
    wb, c, w = sd["base_weights"], sd["grams_basis_weights"], sd["beta_weights"]
    din, dout, k = c.shape
    rows = x.shape[0]
    pre = torch.zeros(rows, dout, dtype=torch.float64)
    for i in range(din):
        pre += act(x[:, i]).unsqueeze(1) * wb[:, i]
        z = torch.tanh(x[:, i])
        polys = [torch.ones_like(z), z]
        for d in range(2, k):
            polys.append(z * polys[d - 1] - beta(d - 1, d, w) * polys[d - 2])
        for d in range(k):
            pre += act(polys[d]).unsqueeze(1) * c[i, :, d]
    out = torch.empty_like(pre)
    for r in range(rows):
        mean = pre[r].sum() / dout
        var = ((pre[r] - mean) ** 2).sum() / dout
        out[r] = act((pre[r] - mean) / math.sqrt(var + 1e-5) * sd["norm.weight"] + sd["norm.bias"])
    return out


def random_published_sd(din, dout, degree, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"beta_weights": torch.randn(degree + 1, generator=g, dtype=torch.float64) * 0.3,
            "grams_basis_weights": torch.randn(din, dout, degree + 1, generator=g, dtype=torch.float64),
            "base_weights": torch.randn(dout, din, generator=g, dtype=torch.float64),
            "norm.weight": torch.rand(dout, generator=g, dtype=torch.float64) + 0.5,
            "norm.bias": torch.randn(dout, generator=g, dtype=torch.float64) * 0.2}


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("degree", [0, 1, 2, 3, 5])
def test_published_state_dict_loads_and_matches_term_by_term_forward(impl, degree):
    din, dout = 4, 3
    sd = random_published_sd(din, dout, degree, seed=degree)
    layer = KAGNLayer(din, dout, degree, impl=impl, compile=False, dtype=torch.float64)
    assert set(layer.state_dict()) == PUBLISHED_KEYS
    layer.load_state_dict(sd, strict=True)
    x = torch.randn(6, din, dtype=torch.float64) * 1.5
    assert torch.allclose(layer(x), published_forward(sd, x), atol=1e-12, rtol=0)


def test_beta_constant_is_the_published_one():
    """(m+n)(m-n) n^2 / (m^2 / (4n^2-1)), i.e. times (4n^2-1) / m^2; dividing by m^2 (4n^2-1) is a different layer."""
    # 6 outputs: LayerNorm over 2 outputs maps almost any pre-activation to about (+1, -1), hiding the difference.
    sd = random_published_sd(3, 6, 4, seed=7)
    layer = KAGNLayer(3, 6, 4, compile=False, dtype=torch.float64)
    layer.load_state_dict(sd)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    def divided(n, m, w):
        return (m + n) * (m - n) * n ** 2 / (m ** 2 * (4 * n ** 2 - 1)) * w[n]

    wrong = published_forward(sd, x, beta=divided)
    assert (layer(x) - wrong).abs().max() > 1e-3


def test_other_activation_runs_the_plain_formula():
    sd = random_published_sd(4, 3, 3, seed=8)
    layer = KAGNLayer(4, 3, act=nn.GELU, dtype=torch.float64)
    assert not layer.fused
    layer.load_state_dict(sd)
    x = torch.randn(6, 4, dtype=torch.float64)
    assert torch.allclose(layer(x), published_forward(sd, x, act=nn.functional.gelu), atol=1e-12, rtol=0)


def test_defaults_keys_and_parameter_formula():
    layer = KAGNLayer(192, 192, compile=False)
    assert layer.degree == 3 and set(layer.state_dict()) == PUBLISHED_KEYS
    assert tuple(layer.grams_basis_weights.shape) == (192, 192, 4) and tuple(layer.base_weights.shape) == (192, 192)
    assert tuple(layer.beta_weights.shape) == (4,) and tuple(layer.norm.weight.shape) == (192,)
    n = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert n == 192 * 192 * 5 + 3 + 1 + 2 * 192 == KIND.params(192, 192, {})
    for degree in (0, 1, 5):
        built = KAGNLayer(7, 5, degree)
        assert sum(p.numel() for p in built.parameters()) == KIND.params(7, 5, {"degree": degree})
    assert layer(torch.randn(2, 3, 192)).shape == (2, 3, 192)  # leading dimensions kept (published: flattened)


def test_init_is_published_draw_for_draw_and_its_statistics():
    din, dout, degree = 64, 48, 3
    torch.manual_seed(31)
    layer = KAGNLayer(din, dout, degree)
    torch.manual_seed(31)
    beta, grams, base = torch.zeros(degree + 1), torch.zeros(din, dout, degree + 1), torch.zeros(dout, din)
    nn.init.normal_(beta, mean=0.0, std=1.0 / (din * (degree + 1.0)))
    nn.init.xavier_uniform_(grams)
    nn.init.xavier_uniform_(base)
    assert torch.equal(layer.beta_weights, beta) and torch.equal(layer.grams_basis_weights, grams)
    assert torch.equal(layer.base_weights, base)
    assert torch.equal(layer.norm.weight, torch.ones(dout)) and torch.equal(layer.norm.bias, torch.zeros(dout))
    # xavier on (in, out, D+1): fan_in = out (D+1), fan_out = in (D+1)
    bound = math.sqrt(6 / ((din + dout) * (degree + 1)))
    g = layer.grams_basis_weights
    assert g.abs().max() <= bound and g.abs().max() > 0.99 * bound
    assert g.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert layer.base_weights.abs().max() <= math.sqrt(6 / (din + dout))
    big = KAGNLayer(100, 4, 3)  # more beta draws for the statistic: reset many times
    draws = []
    for _ in range(300):
        big.reset_parameters()
        draws.append(big.beta_weights.detach().clone())
    assert torch.stack(draws).std().item() == pytest.approx(1 / 400, rel=0.06)


@pytest.mark.parametrize("degree", [1, 3, 4])
def test_gradcheck_float64_including_beta_weights(degree):
    torch.manual_seed(32)
    layer = KAGNLayer(3, 3, degree, compile=False, dtype=torch.float64)
    layer.load_state_dict(random_published_sd(3, 3, degree, seed=32))
    names = [n for n, _ in layer.named_parameters()]
    params = dict(layer.named_parameters())
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def f(inp, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (inp,))

    assert torch.autograd.gradcheck(f, (x, *[params[n].detach().clone().requires_grad_() for n in names]))


def test_second_derivatives_gradgradcheck():
    # create_graph backwards (Hessian-vector products) differentiate the plain formula inside the Function.
    layer = KAGNLayer(2, 2, 3, compile=False, dtype=torch.float64)
    layer.load_state_dict(random_published_sd(2, 2, 3, seed=33))
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    beta = layer.beta_weights.detach().clone().requires_grad_()
    grams = layer.grams_basis_weights.detach().clone().requires_grad_()

    def f(inp, b, c):
        return torch.func.functional_call(layer, {"beta_weights": b, "grams_basis_weights": c}, (inp,))

    assert torch.autograd.gradgradcheck(f, (x, beta, grams))


def test_fast_equals_reference_float32():
    torch.manual_seed(34)
    fast, ref = KAGNLayer(24, 16, compile=False), KAGNLayer(24, 16, impl="reference")
    with torch.no_grad():
        fast.beta_weights.normal_(0, 0.3)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(50, 24) * 2
    out = []
    for layer in (fast, ref):
        xx = x.clone().requires_grad_()
        y = layer(xx)
        y.backward(torch.sin(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape))
        out.append([y.detach(), xx.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*out):
        assert (a - b).abs().max() <= 2e-5 * max(1.0, b.abs().max().item())


def test_no_input_cache_and_fresh_beta_weights():
    """The published lru_cache keeps inputs alive and returns a basis made with old beta_weights; ours neither."""
    layer = KAGNLayer(4, 3, 3, compile=False)
    x = torch.randn(5, 4)
    ref = weakref.ref(x)
    with torch.no_grad():
        before = layer(x)
        layer.beta_weights.add_(1.0)
        after = layer(x)
    assert not torch.allclose(before, after)
    # The value: the formula with the new beta_weights (float64 transcription), not just "something else".
    sd = {k: v.double() for k, v in layer.state_dict().items()}
    assert torch.allclose(after.double(), published_forward(sd, x.double()), rtol=1e-5, atol=1e-5)
    del x
    gc.collect()
    assert ref() is None


def test_memory_model_is_what_autograd_saves(saved_floats):
    n, din, dout = 64, 12, 10
    layer = KAGNLayer(din, dout, compile=False)
    assert KIND.memory(layer) == din + 2 * dout + 2
    assert saved_floats(layer, torch.randn(n, din, requires_grad=True)) == n * KIND.memory(layer)
    ref = KAGNLayer(din, dout, impl="reference")
    assert saved_floats(ref, torch.randn(n, din, requires_grad=True)) >= n * din * 4 * 2  # basis before/after SiLU


def test_basis_flops_and_markers():
    assert KIND.basis_flops(KAGNLayer(4, 4)) == 19
    assert KIND.basis_flops(KAGNLayer(4, 4, degree=1)) == 7
    keys = {"fc1." + k for k in KAGNLayer(4, 4).state_dict()}
    assert all(any(k.endswith(m) for k in keys) for m in KIND.key_markers)


def test_meta_device_build_and_forward():
    layer = KAGNLayer(192, 96, device="meta")
    assert all(p.is_meta for p in layer.parameters())
    assert layer(torch.randn(8, 192, device="meta")).shape == (8, 96)
    torch.manual_seed(36)
    layer.to_empty(device="cpu").reset_parameters()
    assert torch.isfinite(layer.grams_basis_weights).all() and layer.grams_basis_weights.abs().max() > 0
    # The values: the published init drawn as a CPU build draws it (the meta build consumed no random numbers).
    torch.manual_seed(36)
    cpu = KAGNLayer(192, 96)
    for key, value in cpu.state_dict().items():
        assert torch.equal(layer.state_dict()[key], value), key


def test_bf16_autocast_close_to_float32():
    torch.manual_seed(35)
    layer = KAGNLayer(32, 24, compile=False)
    x = torch.randn(40, 32)
    want = layer(x)
    xx = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(xx)
    assert (y.float() - want).abs().max() <= 0.05 * want.abs().max()
    y.float().sum().backward()
    assert xx.grad.dtype == torch.float32 and torch.isfinite(xx.grad).all()
    assert all(p.grad.dtype == torch.float32 for p in layer.parameters())
    # The values: the float32 gradients, to bf16 rounding (same bar as the output's).
    grads_bf16 = [xx.grad] + [p.grad for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    x32 = x.clone().requires_grad_()
    layer(x32).sum().backward()
    for got, want32 in zip(grads_bf16, [x32.grad] + [p.grad for p in layer.parameters()]):
        assert (got - want32).abs().max() <= 0.05 * want32.abs().max()


@pytest.mark.parametrize("args,kwargs,match", [
    ((4, 4), dict(degree=-1), "degree"), ((4, 4), dict(degree=1.5), "degree"), ((4, 0), {}, "out_features"),
    ((4, 4), dict(act="silu"), "act"), ((4, 4), dict(impl="x"), "impl"),
])
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        KAGNLayer(*args, **kwargs)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        KAGNLayer(4, 4)(torch.randn(3, 5))


@pytest.mark.slow
def test_compiled_kernels_and_torch_compile_equal_eager(compiled_kernels):
    torch.manual_seed(36)
    eager = KAGNLayer(16, 12, compile=False)
    with torch.no_grad():
        eager.beta_weights.normal_(0, 0.3)
    kernels = KAGNLayer(16, 12, compile=True)
    kernels.load_state_dict(eager.state_dict())
    whole = torch.compile(eager)
    x = torch.randn(37, 16) * 2
    results = []
    for layer in (eager, kernels, whole):
        eager.zero_grad(set_to_none=True)
        kernels.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        y = layer(xx)
        y.pow(2).sum().backward()
        owner = kernels if layer is kernels else eager
        results.append([y.detach(), xx.grad] + [p.grad for p in owner.parameters()])
    ours = lambda table: [k for k in table if k[0] == "kanvision.kinds.kagn"]  # noqa: E731
    assert not ours(compile_failures()) and len(ours(kernel_graphs())) >= 2
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())
