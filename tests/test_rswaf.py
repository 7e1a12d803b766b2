"""RSWAFKAN: the formula as Vision-KAN ran it, parameter layout, exact gradients for every width h."""
import math

import pytest
import torch
import torch.nn.functional as F

from kanvision.layers import RSWAFKAN


def formula_output(layer: RSWAFKAN, x: torch.Tensor, h: float) -> torch.Tensor:
    """y_o = sum_{i,j} W[o, i*G + j] (1 - tanh((LN(x)_i - u_j) / h)^2), written out term by term."""
    u = F.layer_norm(x, (layer.in_features,), layer.layernorm.weight, layer.layernorm.bias, layer.layernorm.eps)
    centres = layer.rbf.grid
    w = layer.spline_linear.weight
    out = torch.zeros(x.shape[0], layer.out_features, dtype=x.dtype)
    for i in range(layer.in_features):
        for j in range(layer.num_grids):
            b = 1 - torch.tanh((u[:, i] - centres[j]) / h) ** 2
            out += b.unsqueeze(1) * w[:, i * layer.num_grids + j]
    return out


def test_defaults_and_parameter_count():
    layer = RSWAFKAN(192, 192)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 2 * 192 + 8 * 192 * 192 == 295_296
    assert torch.allclose(layer.rbf.grid, torch.linspace(-2, 2, 8))
    assert layer.rbf.denominator.item() == pytest.approx(0.33)
    assert set(layer.state_dict()) == {"layernorm.weight", "layernorm.bias", "spline_linear.weight", "rbf.grid"}
    assert layer.spline_linear.bias is None


def test_trainable_centres_and_width_are_options():
    layer = RSWAFKAN(4, 3, train_grid=True, train_denominator=True)
    names = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert {"rbf.grid", "rbf.denominator"} <= names
    assert sum(p.numel() for p in layer.parameters()) == 2 * 4 + 8 * 4 * 3 + 8 + 1


def test_xavier_uniform_init():
    torch.manual_seed(0)
    layer = RSWAFKAN(64, 32)
    bound = math.sqrt(6 / (64 * 8 + 32))
    w = layer.spline_linear.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


@pytest.mark.parametrize("h", [0.33, 0.5, 1.0])
def test_forward_matches_formula_and_uses_h(h):
    torch.manual_seed(1)
    layer = RSWAFKAN(5, 3, denominator=h).double()
    with torch.no_grad():
        layer.layernorm.weight.uniform_(0.5, 1.5)
        layer.layernorm.bias.uniform_(-0.2, 0.2)
    x = torch.randn(7, 5, dtype=torch.float64)
    assert torch.allclose(layer(x), formula_output(layer, x, h), atol=1e-12)
    # A forward that ignored h (as the current faster-kan does) would give the h = 1 function.
    if h != 1.0:
        assert not torch.allclose(layer(x), formula_output(layer, x, 1.0), atol=1e-3)


@pytest.mark.parametrize("h", [0.33, 0.5, 1.0])
def test_gradcheck_float64(h):
    torch.manual_seed(2)
    layer = RSWAFKAN(4, 3, denominator=h, train_grid=True, train_denominator=True).double()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    names = ["spline_linear.weight", "layernorm.weight", "layernorm.bias", "rbf.grid", "rbf.denominator"]
    tensors = dict(layer.named_parameters())

    def f(inp, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (inp,))

    inputs = (x, *[tensors[n].detach().clone().requires_grad_() for n in names])
    assert torch.autograd.gradcheck(f, inputs)


def test_reference_state_dict_layouts_load():
    """Vision-KAN's FasterKANLayer keys, with and without its stored inverse width, load strictly."""
    torch.manual_seed(3)
    din, dout = 3, 2
    sd = {
        "layernorm.weight": torch.rand(din, dtype=torch.float64) + 0.5,
        "layernorm.bias": torch.randn(din, dtype=torch.float64) * 0.1,
        "spline_linear.weight": torch.randn(dout, din * 8, dtype=torch.float64),
        "rbf.grid": torch.linspace(-2, 2, 8, dtype=torch.float64),
    }
    x = torch.randn(5, din, dtype=torch.float64)
    layer = RSWAFKAN(din, dout).double()
    layer.load_state_dict(sd, strict=True)
    assert torch.allclose(layer(x), formula_output(layer, x, 0.33), atol=1e-12)
    # `rbf.inv_denominator` stores 1/h: 0.5 means h = 2.
    layer2 = RSWAFKAN(din, dout).double()
    layer2.load_state_dict(dict(sd, **{"rbf.inv_denominator": torch.tensor(0.5, dtype=torch.float64)}), strict=True)
    assert layer2.rbf.denominator.item() == pytest.approx(2.0)
    assert torch.allclose(layer2(x), formula_output(layer2, x, 2.0), atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(denominator=0.0), "denominator"),
    (dict(denominator=-1.0), "denominator"),
    (dict(num_grids=0), "num_grids"),
    (dict(grid_min=1.0, grid_max=-1.0), "grid_min"),
])
def test_invalid_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RSWAFKAN(4, 4, **kwargs)


def test_shapes_and_wrong_last_dimension():
    layer = RSWAFKAN(6, 5)
    assert layer(torch.randn(2, 3, 6)).shape == (2, 3, 5)
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\).*\(2, 5\)"):
        layer(torch.randn(2, 5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_not_hidden(bad):
    torch.manual_seed(4)
    layer = RSWAFKAN(4, 3)
    x = torch.randn(5, 4)
    x_bad = x.clone()
    x_bad[1, 2] = bad
    y, y_bad = layer(x), layer(x_bad)
    assert not torch.isfinite(y_bad[1]).any()
    keep = [0, 2, 3, 4]
    assert torch.allclose(y_bad[keep], y[keep], atol=1e-6)
