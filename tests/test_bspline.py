"""BSplineKAN: fidelity to efficient-kan's parameterization, basis properties, init, update_grid, errors.

Tolerances: float64 comparisons at 1e-10 (same arithmetic, different order), float32 at 1e-5.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from kanvision.layers import BSplineKAN, ChannelsFirst, b_spline_basis, uniform_knots


def scalar_bspline(t: list[float], m: int, k: int, x: float) -> float:
    """Textbook Cox-de Boor for one basis, one point: independent of the vectorised code under test."""
    if k == 0:
        return 1.0 if t[m] <= x < t[m + 1] else 0.0
    out = 0.0
    if t[m + k] != t[m]:
        out += (x - t[m]) / (t[m + k] - t[m]) * scalar_bspline(t, m, k - 1, x)
    if t[m + k + 1] != t[m + 1]:
        out += (t[m + k + 1] - x) / (t[m + k + 1] - t[m + 1]) * scalar_bspline(t, m + 1, k - 1, x)
    return out


def formula_output(layer: BSplineKAN, x: torch.Tensor) -> torch.Tensor:
    """y_o = sum_i w_b[o,i] SiLU(x_i) + sum_{i,m} c[o,i,m] s[o,i] B_m(x_i), with the scalar basis."""
    n, d = x.shape
    nb = layer.num_bases
    bases = torch.tensor([[[scalar_bspline(layer.grid[i].tolist(), m, layer.spline_order, x[r, i].item())
                            for m in range(nb)] for i in range(d)] for r in range(n)], dtype=x.dtype)
    scaler = layer.spline_scaler if layer.enable_standalone_scale_spline else torch.ones_like(layer.base_weight)
    spline = torch.einsum("nim,oim,oi->no", bases, layer.spline_weight, scaler)
    return F.silu(x) @ layer.base_weight.T + spline


@pytest.mark.parametrize("grid_size,order,scaler", [(5, 3, True), (5, 3, False), (3, 1, True), (10, 2, True)])
def test_parameter_count_and_state_dict_layout(grid_size, order, scaler):
    layer = BSplineKAN(7, 4, grid_size=grid_size, spline_order=order, enable_standalone_scale_spline=scaler)
    n_trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert n_trainable == (grid_size + order + (2 if scaler else 1)) * 7 * 4
    sd = layer.state_dict()
    expected = {"base_weight": (4, 7), "spline_weight": (4, 7, grid_size + order), "grid": (7, grid_size + 2 * order + 1)}
    if scaler:
        expected["spline_scaler"] = (4, 7)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_default_count_for_192():
    layer = BSplineKAN(192, 192)
    assert sum(p.numel() for p in layer.parameters()) == 368_640  # 10 per edge
    # Default knots: 5 intervals on [-1, 1], extended by 3 steps each side (12 knots, 8 bases).
    assert torch.allclose(layer.grid[0], torch.linspace(-2.2, 2.2, 12), atol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("grid_size", [1, 3, 5, 10])
def test_partition_of_unity_and_zero_outside(order, grid_size):
    grid = uniform_knots(3, grid_size, order, (-1.0, 1.0), dtype=torch.float64)
    inside = torch.rand(500, 3, dtype=torch.float64) * 2 - 1
    bases = b_spline_basis(inside, grid, order)
    assert bases.shape == (500, 3, grid_size + order)
    assert torch.allclose(bases.sum(-1), torch.ones(500, 3, dtype=torch.float64), atol=1e-12)
    assert (bases >= 0).all()
    lo, hi = grid[0, 0].item(), grid[0, -1].item()
    outside = torch.tensor([[lo - 1e-3, hi, hi + 5.0], [-100.0, 1e6, lo - 1e-9]], dtype=torch.float64)
    assert (b_spline_basis(outside, grid, order) == 0).all()


def test_reference_basis_matches_textbook_on_nonuniform_knots():
    torch.manual_seed(0)
    knots = torch.sort(torch.randn(2, 12, dtype=torch.float64), dim=1).values
    x = knots[:, 0] + torch.rand(40, 2, dtype=torch.float64) * (knots[:, -1] - knots[:, 0])
    got = b_spline_basis(x, knots, 3)
    want = torch.tensor([[[scalar_bspline(knots[i].tolist(), m, 3, x[r, i].item()) for m in range(8)]
                          for i in range(2)] for r in range(40)], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-12)


def test_repeated_knots_give_finite_bases():
    knots = torch.tensor([[-3.0, -2.0, -1.0, 0.0, 0.0, 0.5, 1.0, 2.0, 3.0]], dtype=torch.float64)
    x = torch.linspace(-0.99, 0.99, 50, dtype=torch.float64).unsqueeze(1)
    bases = b_spline_basis(x, knots, 2)
    assert torch.isfinite(bases).all()
    assert torch.allclose(bases.sum(-1), torch.ones(50, 1, dtype=torch.float64), atol=1e-12)


def test_forward_matches_formula_from_reference_state_dict():
    """Weights in efficient-kan's KANLinear layout load and give the documented function."""
    torch.manual_seed(1)
    din, dout = 3, 2
    grid = uniform_knots(din, 5, 3, (-1, 1), dtype=torch.float64)
    reference_sd = {
        "base_weight": torch.randn(dout, din, dtype=torch.float64),
        "spline_weight": torch.randn(dout, din, 8, dtype=torch.float64),
        "spline_scaler": torch.randn(dout, din, dtype=torch.float64),
        "grid": grid,
    }
    layer = BSplineKAN(din, dout).double()
    layer.load_state_dict(reference_sd, strict=True)
    x = torch.rand(6, din, dtype=torch.float64) * 3 - 1.5  # some points beyond grid_range, inside the knots
    assert torch.allclose(layer(x), formula_output(layer, x), atol=1e-10)


def test_no_scaler_variant_formula():
    torch.manual_seed(2)
    layer = BSplineKAN(3, 2, enable_standalone_scale_spline=False, scale_spline=2.5).double()
    assert not hasattr(layer, "spline_scaler")
    x = torch.rand(5, 3, dtype=torch.float64) * 2 - 1
    assert torch.allclose(layer(x), formula_output(layer, x), atol=1e-10)


def test_init_is_deterministic_and_as_reference():
    torch.manual_seed(3)
    a = BSplineKAN(16, 8)
    torch.manual_seed(3)
    b = BSplineKAN(16, 8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    bound = 1 / math.sqrt(16)
    assert a.base_weight.abs().max() <= bound and a.base_weight.abs().max() > 0.8 * bound
    assert a.spline_scaler.abs().max() <= bound
    # Coefficients interpolate noise of amplitude scale_noise / (2 * grid_size) at the grid points.
    grid_points = a.grid.T[3:-3].double()
    values = torch.einsum("nim,oim->nio", b_spline_basis(grid_points, a.grid.double(), 3), a.spline_weight.double())
    assert values.abs().max() <= 0.1 / 5 / 2 + 1e-6
    assert values.abs().max() > 0.1 / 5 / 2 * 0.5


def test_meta_device_construction():
    layer = BSplineKAN(64, 32, device="meta")
    assert layer.spline_weight.is_meta
    assert sum(p.numel() for p in layer.parameters()) == 10 * 64 * 32


def test_inputs_of_any_leading_shape_and_channels_first():
    torch.manual_seed(4)
    layer = BSplineKAN(6, 5)
    x = torch.randn(2, 3, 4, 6)
    y = layer(x)
    assert y.shape == (2, 3, 4, 5)
    assert torch.allclose(y.reshape(-1, 5), layer(x.reshape(-1, 6)), atol=1e-6)
    img = torch.randn(2, 6, 4, 4)
    y_cf = ChannelsFirst(layer)(img)
    assert y_cf.shape == (2, 5, 4, 4)
    assert torch.allclose(y_cf, layer(img.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), atol=1e-6)


def test_wrong_last_dimension_names_expected_and_got():
    layer = BSplineKAN(6, 5)
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\).*\(4, 7\)"):
        layer(torch.randn(4, 7))


@pytest.mark.parametrize("kwargs,match", [
    (dict(grid_size=0), "grid_size"),
    (dict(spline_order=0), "spline_order"),
    (dict(grid_range=(1, 1)), "grid_range"),
    (dict(grid_range=(1, -1)), "grid_range"),
    (dict(grid_eps=1.5), "grid_eps"),
])
def test_invalid_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BSplineKAN(4, 4, **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_not_hidden(bad):
    torch.manual_seed(5)
    layer = BSplineKAN(4, 3)
    x = torch.rand(5, 4) * 2 - 1
    x_bad = x.clone()
    x_bad[2, 1] = bad
    y, y_bad = layer(x), layer(x_bad)
    assert not torch.isfinite(y_bad[2]).any()
    keep = [0, 1, 3, 4]
    assert torch.allclose(y_bad[keep], y[keep], atol=1e-6)


def _relative_changes(layer, x, update):
    with torch.no_grad():
        s0, y0 = layer.spline_output(x), layer(x)
        update(layer, x)
        s1, y1 = layer.spline_output(x), layer(x)
    return ((s1 - s0).norm() / s0.norm()).item(), ((y1 - y0).norm() / y0.norm()).item()


def _published_update_grid(layer, x):
    """efficient-kan's refit: the *scaled* spline values become the new unscaled coefficients."""
    scaled = layer.spline_weight * layer.spline_scaler.unsqueeze(-1)
    per_edge = torch.einsum("nim,oim->nio", layer.b_splines(x), scaled)
    layer.update_grid(x)
    layer.spline_weight.copy_(layer._fit_coefficients(x, per_edge, layer.grid))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_update_grid_preserves_the_function(seed):
    torch.manual_seed(seed)
    layer = BSplineKAN(32, 16).double()
    x = torch.rand(4096, 32, dtype=torch.float64) * 2 - 1
    spline_change, output_change = _relative_changes(layer, x, lambda l, v: l.update_grid(v))
    assert spline_change <= 0.03
    assert output_change <= 0.005
    # The grid follows the data: sorted knots, inner ones spanning the batch's range.
    g = layer.grid
    assert (g[:, 1:] >= g[:, :-1]).all()
    assert (g[:, 3] <= x.min(0).values).all() and (g[:, -4] >= x.max(0).values).all()


def test_published_update_grid_would_fail_the_bound():
    """Guards the test above: the scaler-applied-twice refit breaks the 3% bound by far."""
    torch.manual_seed(0)
    layer = BSplineKAN(32, 16).double()
    x = torch.rand(4096, 32, dtype=torch.float64) * 2 - 1
    spline_change, _ = _relative_changes(layer, x, _published_update_grid)
    assert spline_change > 0.5


def test_update_grid_tracks_shifted_data_and_refuses_nan():
    torch.manual_seed(6)
    layer = BSplineKAN(4, 3).double()
    x = torch.randn(1000, 4, dtype=torch.float64) * 0.3 + 0.5
    layer.update_grid(x)
    assert torch.allclose(layer.grid[:, 3], x.min(0).values - 0.01, atol=0.02)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layer.update_grid(x)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_regularization_loss_matches_definitions():
    torch.manual_seed(7)
    layer = BSplineKAN(5, 4).double()
    l1 = layer.spline_weight.abs().mean(-1)
    p = l1 / l1.sum()
    proxy = l1.sum() - (p * p.log()).sum()
    assert torch.allclose(layer.regularization_loss(), proxy)
    x = torch.rand(64, 5, dtype=torch.float64) * 2 - 1
    phi = torch.einsum("nim,oim->noi", layer.b_splines(x), layer.scaled_spline_weight)
    l1x = phi.abs().mean(0)
    px = l1x / l1x.sum()
    want = 2.0 * l1x.sum() - 0.5 * (px * px.log()).sum()
    got = layer.regularization_loss(x, regularize_activation=2.0, regularize_entropy=0.5)
    assert torch.allclose(got, want)
    # The gradient's value: autograd through the formula written above (want), not just "some gradient".
    grads_want = torch.autograd.grad(want, [layer.spline_weight, layer.spline_scaler], retain_graph=True)
    got.backward()
    assert layer.spline_weight.grad is not None and layer.spline_weight.grad.abs().sum() > 0
    assert torch.allclose(layer.spline_weight.grad, grads_want[0], rtol=1e-10, atol=1e-12)
    assert torch.allclose(layer.spline_scaler.grad, grads_want[1], rtol=1e-10, atol=1e-12)


def test_reference_path_gradcheck():
    torch.manual_seed(8)
    layer = BSplineKAN(3, 2, grid_size=4, spline_order=2).double()
    x = (torch.rand(5, 3, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,))


@pytest.mark.parametrize("order,grid_size", [(1, 3), (2, 5), (3, 5), (3, 8)])
def test_uniform_local_basis_is_the_textbook_basis(order, grid_size):
    """uniform_basis (the local polynomial form) equals the scalar Cox-de Boor recursion at random points,
    points outside the knots and points exactly on knots (half-open support)."""
    from kanvision.kinds.bspline.basis import uniform_basis
    grid = uniform_knots(2, grid_size, order, (-1.0, 1.0), dtype=torch.float64)
    g = grid[0].tolist()
    x = torch.cat([torch.rand(40, 2, dtype=torch.float64) * 3 - 1.5, grid[:, ::2].t()[: 2 * grid_size].reshape(-1, 2)])
    got = uniform_basis(x, grid, order)
    want = torch.tensor([[[scalar_bspline(g, m, order, float(v)) for m in range(grid_size + order)] for v in row]
                         for row in x], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_local_impl_is_the_same_function_to_second_order():
    """impl='local' (what HVPs use) gives the reference's output, gradient and Hessian-vector product."""
    torch.manual_seed(2)
    ref = BSplineKAN(4, 3, grid_size=5, spline_order=3, impl="reference").double()
    loc = BSplineKAN(4, 3, grid_size=5, spline_order=3, impl="local").double()
    loc.load_state_dict(ref.state_dict())
    x = torch.rand(16, 4, dtype=torch.float64) * 2.4 - 1.2
    v = [torch.randn_like(p) for p in ref.parameters()]

    def hvp(layer):
        params = list(layer.parameters())
        loss = layer(torch.tanh(x * params[0].sum())).pow(2).mean()  # inputs depend on parameters too
        g = torch.autograd.grad(loss, params, create_graph=True)
        return loss, g, torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), params)

    for a, b in zip(hvp(ref), hvp(loc)):
        for p, q in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)
    x2 = (torch.rand(5, 4, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda inp: loc(inp), (x2,))
