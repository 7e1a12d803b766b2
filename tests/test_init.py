"""`init=` on BSplineKAN and RSWAFKAN: weight statistics against each choice's formula, computed here
independently of kanvision (scipy quadrature, scipy B-splines, torch's own initializers).

Tolerances: standard deviations within 3% on >= 16k entries (the sampling error of a std over n normal
draws is 1/sqrt(2n): 0.6% at 16k, 0.3% at 65k); excess kurtosis within 0.15 (its sampling error is
sqrt(24/n) = 0.02 at 65k; normal 0, uniform -1.2); output second moments within 10% (one random layer of
256 x 256: the fluctuation of the mean over outputs and 2048 samples is ~2-3%).
"""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.interpolate import BSpline
from torch import nn

from kanvision.layers import BSplineKAN, RSWAFKAN, b_spline_basis

CHOICES = ("default", "kaiming_normal", "kaiming_uniform", "orthogonal", "lecun", "glorot")
STD_REL = 0.03


# --- independent references --------------------------------------------------------------------------

def silu_moments(lo, hi):
    """(E[SiLU(x)^2], E[SiLU'(x)^2]) for x ~ U(lo, hi), by adaptive quadrature."""
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))
    f = lambda x: x * sig(x)
    df = lambda x: sig(x) * (1.0 + x * (1.0 - sig(x)))
    return (quad(lambda x: f(x) ** 2, lo, hi)[0] / (hi - lo), quad(lambda x: df(x) ** 2, lo, hi)[0] / (hi - lo))


def bspline_moments(grid_size, order, lo, hi):
    """(mean_m E[B_m^2], mean_m E[B_m'^2]) for x ~ U(lo, hi) on uniform knots extended by `order` steps."""
    h = (hi - lo) / grid_size
    t = lo + h * np.arange(-order, grid_size + order + 1)
    inner = t[(t > lo) & (t < hi)]
    second, slope = [], []
    for m in range(grid_size + order):
        b = BSpline.basis_element(t[m:m + order + 2], extrapolate=False)
        db = b.derivative()
        second.append(quad(lambda x: np.nan_to_num(b(x)) ** 2, lo, hi, points=inner, limit=200)[0] / (hi - lo))
        slope.append(quad(lambda x: np.nan_to_num(db(x)) ** 2, lo, hi, points=inner, limit=200)[0] / (hi - lo))
    return float(np.mean(second)), float(np.mean(slope))


def rswaf_moments(centres, h):
    """(mean_j E[b_j(u)^2], mean_j E[b_j'(u)^2]) for u ~ N(0, 1), b_j = 1 - tanh((u - c_j) / h)^2."""
    pdf = lambda u: math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    second, slope = [], []
    for c in centres:
        b = lambda u: 1 - math.tanh((u - c) / h) ** 2
        db = lambda u: -2 * math.tanh((u - c) / h) * (1 - math.tanh((u - c) / h) ** 2) / h
        second.append(quad(lambda u: b(u) ** 2 * pdf(u), -np.inf, np.inf)[0])
        slope.append(quad(lambda u: db(u) ** 2 * pdf(u), -np.inf, np.inf)[0])
    return float(np.mean(second)), float(np.mean(slope))


def paper_std(name, n_in, n_out, terms, second, slope, gain):
    """arXiv:2509.03417: LeCun- / Glorot-inspired std with the variance shared among `terms` per edge."""
    if name == "lecun":
        return gain / math.sqrt(n_in * terms * second)
    return gain * math.sqrt(2.0 / (terms * (n_in * second + n_out * slope)))


def bspline_expected_stds(name, n_in, n_out, grid_size=5, order=3, lo=-1.0, hi=1.0):
    gain = (hi - lo) / math.sqrt(12)
    terms = grid_size + order + 1
    return (paper_std(name, n_in, n_out, terms, *silu_moments(lo, hi), gain),
            paper_std(name, n_in, n_out, terms, *bspline_moments(grid_size, order, lo, hi), gain))


def excess_kurtosis(w):
    w = w.detach().double().flatten()
    w = w - w.mean()
    return float((w ** 4).mean() / (w ** 2).mean() ** 2 - 3)


def assert_std(t, want, rel=STD_REL):
    got = float(t.detach().double().std())
    assert abs(got / want - 1) < rel, f"std {got:.5g}, formula {want:.5g}"


# --- choices and errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [BSplineKAN, RSWAFKAN])
def test_unknown_init_names_the_choices(cls):
    listed = ", ".join(f"'{c}'" for c in CHOICES)
    with pytest.raises(ValueError) as err:
        cls(4, 3, init="foo")
    assert str(err.value) == f"{cls.__name__}: init must be one of {listed}, got 'foo'"


# --- "default": today's init, bit for bit ----------------------------------------------------------

@pytest.mark.parametrize("scaler", [True, False])
def test_default_bspline_is_efficient_kan_draw_for_draw(scaler):
    """Same seed, same draws in the same order as efficient-kan: kaiming-uniform base (float32), float64
    noise on the CPU, kaiming-uniform scaler; coefficients = minimum-norm fit at the interior knots."""
    d_in, d_out, G, k = 9, 6, 5, 3
    torch.manual_seed(3)
    layer = BSplineKAN(d_in, d_out, scale_spline=0.8, enable_standalone_scale_spline=scaler, compile=False)
    torch.manual_seed(3)
    base = torch.empty(d_out, d_in)
    nn.init.kaiming_uniform_(base, a=math.sqrt(5))
    noise = ((torch.rand(G + 1, d_in, d_out, dtype=torch.float64) - 0.5) * 0.1 / G).numpy()
    if scaler:
        scale = torch.empty(d_out, d_in)
        nn.init.kaiming_uniform_(scale, a=math.sqrt(5) * 0.8)
        assert torch.equal(layer.spline_scaler, scale)
    assert torch.equal(layer.base_weight, base)
    t = -1 + 0.4 * np.arange(-k, G + k + 1)
    design = BSpline.design_matrix(np.linspace(-1, 1, G + 1), t, k).toarray()  # (G + 1, G + k)
    coeff = np.einsum("mp,pio->oim", np.linalg.pinv(design), noise) * (1.0 if scaler else 0.8)
    np.testing.assert_allclose(layer.spline_weight.detach().numpy(), coeff, rtol=0, atol=1e-8)


def test_default_rswaf_is_xavier_uniform_draw_for_draw():
    torch.manual_seed(5)
    layer = RSWAFKAN(6, 4, compile=False)
    torch.manual_seed(5)
    want = torch.empty(4, 6 * 8)
    nn.init.kaiming_uniform_(want, a=math.sqrt(5))  # nn.Linear's own init, drawn when the layer is built
    nn.init.xavier_uniform_(want)
    assert torch.equal(layer.spline_linear.weight, want)
    assert torch.equal(layer.layernorm.weight, torch.ones(6)) and torch.equal(layer.layernorm.bias, torch.zeros(6))


# --- the study's three (arXiv:2411.05296): base weight and scaler, a = sqrt(5) -----------------------

@pytest.mark.parametrize("name,kurtosis", [("kaiming_normal", 0.0), ("kaiming_uniform", -1.2)])
def test_bspline_study_kaiming(name, kurtosis):
    torch.manual_seed(0)
    layer = BSplineKAN(256, 256, init=name, compile=False)
    for w in (layer.base_weight, layer.spline_scaler):
        assert_std(w, 1 / math.sqrt(3 * 256))  # gain sqrt(2 / (1 + 5)) / sqrt(fan_in)
        assert abs(excess_kurtosis(w) - kurtosis) < 0.15
    if name == "kaiming_uniform":
        assert float(layer.base_weight.abs().max()) <= 1 / math.sqrt(256)
    # The spline coefficients keep efficient-kan's fit: the spline interpolates U(+-0.01) noise at the knots.
    t = -1 + 0.4 * np.arange(-3, 5 + 3 + 1)
    design = torch.from_numpy(BSpline.design_matrix(np.linspace(-1, 1, 6), t, 3).toarray()).float()
    at_knots = torch.einsum("pm,oim->pio", design, layer.spline_weight.detach())
    assert float(at_knots.abs().max()) <= 0.01 + 1e-6
    assert_std(at_knots, 0.02 / math.sqrt(12))


def test_bspline_study_orthogonal():
    torch.manual_seed(0)
    layer = BSplineKAN(256, 256, init="orthogonal", compile=False)
    for w in (layer.base_weight, layer.spline_scaler):
        w = w.detach().double()
        assert torch.allclose(w @ w.T, torch.eye(256, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("name", ["kaiming_normal", "kaiming_uniform", "orthogonal"])
def test_rswaf_study_inits(name):
    torch.manual_seed(0)
    layer = RSWAFKAN(32, 128, init=name, compile=False)  # fan_in 32 * 8 = 256
    w = layer.spline_linear.weight.detach().double()
    if name == "orthogonal":  # (128, 256): orthonormal rows
        assert torch.allclose(w @ w.T, torch.eye(128, dtype=torch.float64), atol=1e-5)
    else:
        assert_std(w, 1 / math.sqrt(3 * 256))
        assert abs(excess_kurtosis(w) - (0.0 if name == "kaiming_normal" else -1.2)) < 0.15


# --- variance preserving (arXiv:2509.03417) --------------------------------------------------------

@pytest.mark.parametrize("name", ["lecun", "glorot"])
def test_bspline_variance_preserving_stds_match_the_paper(name):
    torch.manual_seed(0)
    layer = BSplineKAN(256, 128, init=name, compile=False)
    std_r, std_b = bspline_expected_stds(name, 256, 128)
    assert_std(layer.base_weight, std_r)
    assert_std(layer.spline_weight, std_b)
    assert abs(float(layer.spline_weight.mean())) < 0.01 * std_b
    assert torch.equal(layer.spline_scaler, torch.ones(128, 256))  # the paper's c_ji = 1


def test_bspline_variance_preserving_on_another_grid_range():
    """Expectations over U(grid_range) with that distribution's std as gain, and G, k from the layer."""
    torch.manual_seed(1)
    layer = BSplineKAN(256, 64, grid_size=3, spline_order=2, grid_range=(-2.0, 3.0), init="glorot", compile=False)
    std_r, std_b = bspline_expected_stds("glorot", 256, 64, grid_size=3, order=2, lo=-2.0, hi=3.0)
    assert_std(layer.base_weight, std_r)
    assert_std(layer.spline_weight, std_b)


def test_lecun_keeps_the_second_moment_and_glorot_follows_its_formula():
    """For x ~ U(-1, 1): lecun gives E[y^2] = Var(x) = 1/3; glorot gives n_in (s_r^2 E[R^2] + (G+k) s_b^2 E[B^2])."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2048, 256, generator=g) * 2 - 1
    torch.manual_seed(2)
    lecun = BSplineKAN(256, 256, init="lecun", compile=False)
    with torch.no_grad():
        assert abs(float(lecun(x).square().mean()) / (1 / 3) - 1) < 0.10
    torch.manual_seed(2)
    glorot = BSplineKAN(256, 256, init="glorot", compile=False)
    std_r, std_b = bspline_expected_stds("glorot", 256, 256)
    r2, b2 = silu_moments(-1, 1)[0], bspline_moments(5, 3, -1, 1)[0]
    predicted = 256 * (std_r ** 2 * r2 + 8 * std_b ** 2 * b2)
    with torch.no_grad():
        assert abs(float(glorot(x).square().mean()) / predicted - 1) < 0.10


@pytest.mark.parametrize("name", ["lecun", "glorot"])
def test_rswaf_variance_preserving(name):
    """The basis sees LayerNorm(x) ~ N(0, 1): expectations under N(0, 1), gain 1, num_grids terms per edge;
    lecun then gives E[y^2] = 1 whatever the scale and offset of x."""
    torch.manual_seed(3)
    layer = RSWAFKAN(64, 256, init=name, compile=False)
    second, slope = rswaf_moments(np.linspace(-2, 2, 8), 0.33)
    assert_std(layer.spline_linear.weight, paper_std(name, 64, 256, 8, second, slope, 1.0))
    if name == "lecun":
        x = torch.randn(2048, 64, generator=torch.Generator().manual_seed(3)) * 3 + 5
        with torch.no_grad():
            assert abs(float(layer(x).square().mean()) - 1) < 0.10


# --- what must keep working ------------------------------------------------------------------------

@pytest.mark.parametrize("name", CHOICES[1:])
def test_a_seed_gives_the_same_layer_in_every_dtype(name):
    """Non-default choices draw on the CPU in float64 and cast: a float32 layer is the float64 one, rounded
    (the same holds across devices, which draw nothing themselves). The one exception is the noise fit the
    study's choices keep: it is solved on the layer's knots, which float32 rounds (1e-7 relative)."""
    layers = []
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(7)
        layers.append((BSplineKAN(12, 5, init=name, dtype=dtype, compile=False),
                       RSWAFKAN(12, 5, init=name, dtype=dtype, compile=False)))
    for single, double in zip(*layers):
        for (key, a), b in zip(single.named_parameters(), double.parameters()):
            if key == "spline_weight" and name in ("kaiming_normal", "kaiming_uniform", "orthogonal"):
                torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-5, atol=1e-9)
            else:
                assert torch.equal(a, b.to(a.dtype)), key


@pytest.mark.parametrize("name", ["glorot", "kaiming_normal"])
def test_meta_construction_and_grid_update_still_work(name):
    with torch.device("meta"):
        shapes = BSplineKAN(16, 8, init=name), RSWAFKAN(16, 8, init=name)
    assert all(p.is_meta for m in shapes for p in m.parameters())
    torch.manual_seed(4)
    layer = BSplineKAN(6, 5, init=name, dtype=torch.float64, compile=False)
    scaler = layer.spline_scaler.detach().clone()
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.7
    old = torch.einsum("nim,oim->nio", b_spline_basis(x, layer.grid, 3), layer.spline_weight.detach())
    layer.update_grid(x)
    # The refit is the least-squares fit of the unscaled splines on the new knots; the scaler is untouched.
    a = b_spline_basis(x, layer.grid, 3).transpose(0, 1)
    want = torch.linalg.lstsq(a, old.transpose(0, 1), driver="gelsd").solution.permute(2, 0, 1)
    assert (layer.spline_weight.detach() - want).abs().max() <= 1e-9 * want.abs().max()
    assert torch.equal(layer.spline_scaler, scaler)


def test_zoo_kan_kwargs_init_survives_model_construction():
    """timm.create_model(..., kan_kwargs={"init": ...}) builds every KAN layer with that init, after timm's
    own init pass (which re-draws every nn.Linear, RSWAF's included)."""
    import timm

    import kanvision  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model("kan_mixer_tiny_p4_32", kan="bspline", num_blocks=2,
                              kan_kwargs={"init": "glorot", "compile": False})
    layers = [m for m in model.modules() if isinstance(m, BSplineKAN)]
    assert len(layers) == 4
    for layer in layers:
        assert layer.init == "glorot"
        std_r, std_b = bspline_expected_stds("glorot", layer.in_features, layer.out_features)
        assert_std(layer.base_weight, std_r)
        assert_std(layer.spline_weight, std_b)
        assert torch.equal(layer.spline_scaler, torch.ones_like(layer.spline_scaler))
    model = timm.create_model("kan_mixer_tiny_p4_32", kan="rswaf", num_blocks=1,
                              kan_kwargs={"init": "orthogonal", "compile": False})
    layers = [m for m in model.modules() if isinstance(m, RSWAFKAN)]
    assert len(layers) == 2
    for layer in layers:
        w = layer.spline_linear.weight.detach().double()  # (128, 1024): orthonormal rows, not trunc_normal(0.02)
        assert torch.allclose(w @ w.T, torch.eye(w.size(0), dtype=torch.float64), atol=1e-5)


def test_config_kan_kwargs_init_reaches_the_layers(capsys):
    """`kanvision fit --model.kan_kwargs '{"init": "glorot"}'` parses to that dict, and the LightningModule the
    CLI instantiates with it builds its KAN layers with that init. (A full `fit --trainer.fast_dev_run=1`
    with the flag takes ~10 s more here, for nothing these two steps leave out.)"""
    import yaml

    from kanvision.cli import main
    from kanvision.train.module import ImageClassifier

    with pytest.raises(SystemExit) as done:
        main(["fit", "--print_config", "--model.model=kan_mixer_tiny_p4_32", "--model.kan=bspline",
              "--model.kan_kwargs", '{"init": "glorot"}', "--data.dataset=synthetic"])
    assert done.value.code in (0, None)
    model_cfg = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model_cfg["kan_kwargs"] == {"init": "glorot"}
    module = ImageClassifier(model=model_cfg["model"], kan=model_cfg["kan"], model_kwargs={"num_blocks": 1},
                             kan_kwargs=dict(model_cfg["kan_kwargs"], compile=False))
    layers = [m for m in module.modules() if isinstance(m, BSplineKAN)]
    assert len(layers) == 2
    for layer in layers:
        assert layer.init == "glorot"
        assert_std(layer.spline_weight, bspline_expected_stds("glorot", layer.in_features, layer.out_features)[1])
