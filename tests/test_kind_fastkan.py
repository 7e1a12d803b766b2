"""FastKAN kind: exact to ZiyaoLi/fast-kan FastKANLayer (formula, keys, init, parameter count), exact gradients,
memory model, compile / autocast / meta."""
import math

import pytest
import torch
from torch import nn

from kanvision.kinds.compile import compile_failures, kernel_graphs
from kanvision.kinds.fastkan import KIND, FastKANLayer
from kanvision.kinds.rswaf import KIND as RSWAF_KIND
from kanvision.kinds.rswaf import RSWAFKAN

PUBLISHED_KEYS = {"layernorm.weight", "layernorm.bias", "rbf.grid", "spline_linear.weight", "base_linear.weight",
                  "base_linear.bias"}


def published_forward(sd, x, grid_min=-2.0, grid_max=2.0, num_grids=8, use_layernorm=True, use_base_update=True,
                      act=lambda v: v / (1 + torch.exp(-v))):
    """fast-kan's FastKANLayer.forward, term by term in float64 from a published-layout state dict:
    u = LayerNorm(x) (biased variance, eps 1e-5); y_o = sum_{i,j} W_s[o, i G + j] exp(-((u_i - c_j) / h)^2)
    + sum_i W_b[o, i] SiLU(x_i) + b_o, c_j = grid_min + j h, h = (grid_max - grid_min) / (G - 1)."""
    n, din = x.shape
    h = (grid_max - grid_min) / (num_grids - 1)
    u = x.clone()
    if use_layernorm:
        for r in range(n):
            mean = sum(x[r, i] for i in range(din)) / din
            var = sum((x[r, i] - mean) ** 2 for i in range(din)) / din
            for i in range(din):
                u[r, i] = (x[r, i] - mean) / math.sqrt(var + 1e-5) * sd["layernorm.weight"][i] + sd["layernorm.bias"][i]
    ws = sd["spline_linear.weight"]
    out = torch.zeros(n, ws.shape[0], dtype=torch.float64)
    for i in range(din):
        for j in range(num_grids):
            c = grid_min + j * h
            out += torch.exp(-((u[:, i] - c) / h) ** 2).unsqueeze(1) * ws[:, i * num_grids + j]
    if use_base_update:
        for i in range(din):
            out += act(x[:, i]).unsqueeze(1) * sd["base_linear.weight"][:, i]
        out += sd["base_linear.bias"]
    return out


def random_published_sd(din, dout, num_grids=8, grid=None, layernorm=True, base=True):
    g = torch.Generator().manual_seed(din * 100 + dout)
    sd = {"rbf.grid": torch.linspace(-2, 2, num_grids, dtype=torch.float64) if grid is None else grid,
          "spline_linear.weight": torch.randn(dout, din * num_grids, generator=g, dtype=torch.float64)}
    if layernorm:
        sd["layernorm.weight"] = torch.rand(din, generator=g, dtype=torch.float64) + 0.5
        sd["layernorm.bias"] = torch.randn(din, generator=g, dtype=torch.float64) * 0.2
    if base:
        sd["base_linear.weight"] = torch.randn(dout, din, generator=g, dtype=torch.float64)
        sd["base_linear.bias"] = torch.randn(dout, generator=g, dtype=torch.float64)
    return sd


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kwargs", [{}, dict(num_grids=5, grid_min=-1.0, grid_max=3.0), dict(use_base_update=False),
                                    dict(use_layernorm=False), dict(base_activation=nn.GELU)])
def test_published_state_dict_loads_and_matches_term_by_term_forward(impl, kwargs):
    din, dout = 4, 3
    g = kwargs.get("num_grids", 8)
    grid = torch.linspace(kwargs.get("grid_min", -2.0), kwargs.get("grid_max", 2.0), g, dtype=torch.float64)
    sd = random_published_sd(din, dout, g, grid, kwargs.get("use_layernorm", True), kwargs.get("use_base_update", True))
    layer = FastKANLayer(din, dout, impl=impl, compile=False, dtype=torch.float64, **kwargs)
    assert set(layer.state_dict()) == set(sd)
    layer.load_state_dict(sd, strict=True)
    x = torch.randn(6, din, dtype=torch.float64) * 1.5
    act = (lambda v: nn.functional.gelu(v)) if kwargs.get("base_activation") is nn.GELU else \
        (lambda v: v / (1 + torch.exp(-v)))
    names = ("grid_min", "grid_max", "num_grids", "use_layernorm", "use_base_update")
    pub = {k: kwargs[k] for k in names if k in kwargs}
    want = published_forward(sd, x, act=act, **pub)
    assert torch.allclose(layer(x), want, atol=1e-12, rtol=0)


def test_published_defaults_and_keys():
    layer = FastKANLayer(192, 192, compile=False)
    assert set(layer.state_dict()) == PUBLISHED_KEYS
    assert layer.rbf.denominator == pytest.approx(4 / 7)
    assert torch.equal(layer.rbf.grid, torch.linspace(-2, 2, 8))
    assert isinstance(layer.rbf.grid, nn.Parameter) and not layer.rbf.grid.requires_grad
    assert layer.spline_linear.bias is None and layer.base_linear.bias is not None
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == 9 * 192 * 192 + 192 + 2 * 192 == KIND.params(192, 192, {})
    assert layer(torch.randn(2, 3, 192)).shape == (2, 3, 192)  # leading dimensions kept


@pytest.mark.parametrize("kwargs", [dict(num_grids=5), dict(use_base_update=False), dict(use_layernorm=False),
                                    dict(num_grids=3, use_base_update=False, use_layernorm=False)])
def test_parameter_formula_matches_built_layer(kwargs):
    layer = FastKANLayer(7, 5, **kwargs)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == KIND.params(7, 5, kwargs)


def test_init_is_published_draw_for_draw():
    """Same seed -> the weights fast-kan's constructor draws: SplineLinear's trunc_normal(0.1), then nn.Linear."""
    din, dout = 6, 5
    torch.manual_seed(11)
    layer = FastKANLayer(din, dout)
    torch.manual_seed(11)
    spline = torch.empty(dout, din * 8)
    nn.init.trunc_normal_(spline, mean=0.0, std=0.1)
    base = nn.Linear(din, dout)
    assert torch.equal(layer.spline_linear.weight, spline)
    assert torch.equal(layer.base_linear.weight, base.weight) and torch.equal(layer.base_linear.bias, base.bias)
    assert torch.equal(layer.layernorm.weight, torch.ones(din)) and torch.equal(layer.layernorm.bias, torch.zeros(din))


def test_init_statistics_and_reset_after_host_init():
    torch.manual_seed(12)
    layer = FastKANLayer(64, 96)
    w = layer.spline_linear.weight
    assert w.mean().abs() < 0.003 and w.std().item() == pytest.approx(0.1, rel=0.02) and w.abs().max() <= 2
    bound = 1 / math.sqrt(64)  # nn.Linear: kaiming_uniform(a=sqrt 5) -> U(+-1/sqrt(fan_in)), bias the same
    assert layer.base_linear.weight.abs().max() <= bound and layer.base_linear.weight.abs().max() > 0.95 * bound
    assert layer.base_linear.bias.abs().max() <= bound
    for m in layer.modules():  # what timm's init pass does to every nn.Linear
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    assert KIND.reinit_after_host
    layer.reset_parameters()
    assert layer.spline_linear.weight.std().item() == pytest.approx(0.1, rel=0.02)
    assert layer.base_linear.bias.abs().max() > 0


@pytest.mark.parametrize("kwargs", [{}, dict(base_activation=nn.GELU), dict(use_layernorm=False, num_grids=4)])
def test_gradcheck_float64(kwargs):
    torch.manual_seed(13)
    layer = FastKANLayer(4, 3, compile=False, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = dict(layer.named_parameters())
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def f(inp, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (inp,))

    inputs = (x, *[params[n].detach().clone().requires_grad_() for n in names])
    assert torch.autograd.gradcheck(f, inputs)


def test_second_derivatives_gradgradcheck():
    # create_graph backwards (Hessian-vector products) differentiate the plain formula inside the Function.
    torch.manual_seed(17)
    layer = FastKANLayer(3, 2, num_grids=4, compile=False, dtype=torch.float64)
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    ws = layer.spline_linear.weight.detach().clone().requires_grad_()
    wb = layer.base_linear.weight.detach().clone().requires_grad_()

    def f(inp, s, b):
        return torch.func.functional_call(layer, {"spline_linear.weight": s, "base_linear.weight": b}, (inp,))

    assert torch.autograd.gradgradcheck(f, (x, ws, wb))


def test_fast_equals_reference_float32():
    torch.manual_seed(14)
    fast, ref = FastKANLayer(24, 16, compile=False), FastKANLayer(24, 16, impl="reference")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(50, 24) * 2
    ys, grads = [], []
    for layer in (fast, ref):
        xx = x.clone().requires_grad_()
        y = layer(xx)
        y.backward(torch.sin(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape))
        ys.append(y.detach())
        grads.append([xx.grad] + [p.grad for p in layer.parameters() if p.requires_grad])
    assert (ys[0] - ys[1]).abs().max() < 1e-5
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("kwargs", [{}, dict(use_layernorm=False), dict(base_activation=nn.GELU)])
def test_memory_model_is_what_autograd_saves(kwargs, saved_floats):
    n, din = 64, 12
    layer = FastKANLayer(din, 10, compile=False, **kwargs)
    assert saved_floats(layer, torch.randn(n, din, requires_grad=True)) == n * KIND.memory(layer)
    if not kwargs:
        assert KIND.memory(layer) == 2 * din + 2
        ref = FastKANLayer(din, 10, impl="reference")
        assert saved_floats(ref, torch.randn(n, din, requires_grad=True)) >= n * din * 16  # the basis, twice


def test_key_markers_tell_fastkan_from_rswaf():
    fast_keys = {"blocks.0.mlp.fc1." + k for k in FastKANLayer(4, 4).state_dict()}
    rswaf_keys = {"blocks.0.mlp.fc1." + k for k in RSWAFKAN(4, 4).state_dict()}
    marks = lambda keys, kind: all(any(k.endswith(m) for k in keys) for m in kind.key_markers)  # noqa: E731
    assert marks(fast_keys, KIND) and not marks(rswaf_keys, KIND)
    # RSWAF's markers are a strict subset of FastKAN's: the registry's subset rule then names FastKAN alone.
    assert set(RSWAF_KIND.key_markers) < set(KIND.key_markers)


def test_basis_flops():
    assert KIND.basis_flops(FastKANLayer(4, 4)) == 32
    assert KIND.basis_flops(FastKANLayer(4, 4, num_grids=5)) == 20


def test_meta_device_build_and_forward():
    layer = FastKANLayer(192, 96, device="meta")
    assert all(p.is_meta for p in layer.parameters())
    assert layer(torch.randn(8, 192, device="meta")).shape == (8, 96)
    layer.to_empty(device="cpu").reset_parameters()
    assert layer.spline_linear.weight.std().item() == pytest.approx(0.1, rel=0.05)


def test_bf16_autocast_close_to_float32():
    torch.manual_seed(15)
    layer = FastKANLayer(32, 24, compile=False)
    x = torch.randn(40, 32)
    want = layer(x)
    xx = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(xx)
    assert y.dtype == torch.bfloat16
    assert (y.float() - want).abs().max() <= 0.03 * want.abs().max()
    y.float().sum().backward()
    assert xx.grad.dtype == torch.float32 and torch.isfinite(xx.grad).all()
    assert all(p.grad.dtype == torch.float32 for p in layer.parameters() if p.requires_grad)
    # The values: the float32 gradients, to bf16 rounding (same bar as the output's).
    trainable = [p for p in layer.parameters() if p.requires_grad]
    grads_bf16 = [xx.grad] + [p.grad for p in trainable]
    layer.zero_grad(set_to_none=True)
    x32 = x.clone().requires_grad_()
    layer(x32).sum().backward()
    for got, want32 in zip(grads_bf16, [x32.grad] + [p.grad for p in trainable]):
        assert (got - want32).abs().max() <= 0.03 * want32.abs().max()


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_grids=1), "num_grids"), (dict(num_grids=2.5), "num_grids"),
    (dict(grid_min=2.0, grid_max=-2.0), "grid_min"),
    (dict(spline_weight_init_scale=0.0), "spline_weight_init_scale"), (dict(impl="triton"), "impl"),
    (dict(base_activation=3), "base_activation"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FastKANLayer(4, 4, **kwargs)
    with pytest.raises(ValueError, match="use_layernorm"):
        FastKANLayer(1, 4)
    with pytest.raises(ValueError, match="in_features"):
        FastKANLayer(0, 4)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        FastKANLayer(4, 4)(torch.randn(3, 5))


@pytest.mark.slow
def test_compiled_kernels_and_torch_compile_equal_eager(compiled_kernels):
    torch.manual_seed(16)
    eager = FastKANLayer(16, 12, compile=False)
    kernels = FastKANLayer(16, 12, compile=True)
    kernels.load_state_dict(eager.state_dict())
    whole = torch.compile(eager)
    x = torch.randn(37, 16) * 2
    results = []
    for layer in (eager, kernels, whole):
        for p in eager.parameters():
            p.grad = None
        kernels.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        y = layer(xx)
        y.pow(2).sum().backward()
        owner = kernels if layer is kernels else eager
        results.append((y.detach(), xx.grad, [p.grad for p in owner.parameters() if p.requires_grad]))
    ours = lambda table: [k for k in table if k[0] == "kanvision.kinds.fastkan"]  # noqa: E731
    assert not ours(compile_failures()) and len(ours(kernel_graphs())) >= 2  # forward and backward kernels compiled
    for y, gx, gp in results[1:]:
        assert (y - results[0][0]).abs().max() < 1e-5
        assert (gx - results[0][1]).abs().max() < 1e-5
        for a, b in zip(gp, results[0][2]):
            assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())
