"""Every registered KAN kind, present and future, through the same checks (parametrized over the registry).

A kind's own test file checks it against a term-by-term transcription of its published formula; here every kind
is held to what the rest of kanvision assumes of a kind: its record's formulas (parameters, FLOPs, memory) equal
what the built layer does, and the layer survives the settings users pick (autocast, torch.compile, FX, export,
meta, state dicts, double backward for the Hessian, grid updates, parameter matching, every zoo model).
"""
from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
from torch import nn

import kanvision  # noqa: F401  registers the zoo
from kanvision.analysis.memory import saved_tensor_bytes
from kanvision.analysis.params import count_flops
from kanvision.kinds import Kind, available_kinds, get_kind, kind_names, kind_of_layer, register_kind
from kanvision.kinds import registry
from kanvision.kinds.scripting import TorchScriptUnsupported
from kanvision.models import count_parameters
from marks import slow_after

KINDS = list(kind_names())
ZOO = [("kan_mixer_tiny_p4_32", dict(num_blocks=1)), ("kan_convmixer_256_8", dict(depth=1)),
       ("kan_deit_tiny_patch4_32", dict(depth=1))]


# Widths are multiples of 8: GR-KAN splits channels into 8 groups.
def layer_of(kind: str, i: int = 8, o: int = 16, **kw) -> nn.Module:
    torch.manual_seed(0)
    record = get_kind(kind)
    return record.build(i, o, **kw)


def inputs(kind: str, n: int, i: int, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rng = get_kind(kind).sample_range
    if rng is None:
        return torch.randn(n, i, generator=g, dtype=dtype)
    lo, hi = rng
    return torch.rand(n, i, generator=g, dtype=dtype) * (hi - lo) + lo


def reference_layer(kind: str, layer: nn.Module) -> nn.Module:
    """The layer on the kind's autograd reference path where it has one (the fast path otherwise)."""
    if "reference" in get_kind(kind).impls:
        layer.impl = "reference"
    return layer


def test_registry_lists_every_kind_once_and_none_first():
    assert available_kinds()[0] == "none" and len(set(available_kinds())) == len(available_kinds())
    assert set(registry.KINDS) <= set(KINDS)
    for name in KINDS:
        record = get_kind(name)
        assert record.name == name and isinstance(record, Kind)
        assert record.title and record.formula and record.source, f"{name}: the table needs title, formula, source"
        assert record.hidden in ("dim", "mlp")


@pytest.mark.parametrize("bad", ["mlp", "B-spline", "", "kan"])
def test_unknown_kind_is_one_clear_line(bad):
    with pytest.raises(ValueError, match=r"unknown kan kind .*choose one of 'none'"):
        timm.create_model("kan_mixer_tiny_p4_32", kan=bad)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_layer_argument_is_one_clear_line(kind, tiny_model):
    with pytest.raises((ValueError, TypeError)) as e:
        tiny_model("kan_mixer_tiny_p4_32", kind, kan_kwargs=dict(no_such_option=3))
    assert "no_such_option" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("i,o", [(8, 16), (24, 8)])
def test_parameter_formula_equals_the_built_layer(kind, i, o):
    record = get_kind(kind)
    with torch.device("meta"):
        layer = record.build(i, o)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == record.params(i, o, dict(record.defaults))
    assert kind_of_layer(layer) is record


@pytest.mark.parametrize("kind", KINDS)
def test_float64_gradcheck_on_the_default_path(kind):
    layer = layer_of(kind, 8, 8).double()
    x = inputs(kind, 3, 8, torch.float64).requires_grad_()
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = [layer.get_parameter(n).detach().clone().requires_grad_() for n in names]

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_output_is_close_to_float32(kind, dtype):
    layer = layer_of(kind, 16, 24)
    x = inputs(kind, 32, 16)
    want = layer(x)
    with torch.autocast("cpu", dtype=dtype):
        got = layer(x)
        got.float().sum().backward()
    # One rounding of the inputs/weights to 8 (bf16) or 11 (fp16) significant bits, accumulated in float32.
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    err = (got.float() - want).abs().max() / want.abs().max()
    assert err < tol, f"{kind} under {dtype}: relative error {err:.3g}"
    assert all(p.grad is None or p.grad.dtype == p.dtype for p in layer.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip(kind):
    a = layer_of(kind, 8, 16)
    b = get_kind(kind).build(8, 16)
    b.load_state_dict(a.state_dict())
    x = inputs(kind, 10, 8)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("kind", slow_after(KINDS, 2))
def test_torch_compile_traces_without_graph_breaks(kind):
    """fullgraph=True fails on any graph break (a host read such as .item(), data-dependent Python); aot_eager
    runs AOTAutograd's forward and backward graphs without inductor's compile time (test_compile.py runs it)."""
    layer = layer_of(kind, 8, 16)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = inputs(kind, 10, 8).requires_grad_()
    want = layer(x)
    (gx_want,) = torch.autograd.grad(want.square().sum(), x)
    got = compiled(x)
    (gx_got,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_got, gx_want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_meta_fx_export_and_torchscript(kind, tiny_model):
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names

    with torch.device("meta"):
        meta = tiny_model("kan_mixer_tiny_p4_32", kind, num_classes=10)
        assert meta(torch.empty(2, 3, 32, 32)).shape == (2, 10)
    torch.manual_seed(0)
    model = tiny_model("kan_mixer_tiny_p4_32", kind, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        _, nodes = get_graph_node_names(model)
        fx = create_feature_extractor(model, [nodes[-1]]).eval()
        torch.testing.assert_close(next(iter(fx(x).values())), want, rtol=1e-5, atol=1e-6)
        program = torch.export.export(model, (x,))
        torch.testing.assert_close(program.module()(x), want, rtol=1e-5, atol=1e-6)
    try:
        with warnings.catch_warnings():  # scripting is deprecated upstream; users are told what to use instead
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.script(model)
    except TorchScriptUnsupported:
        return  # one clear error naming torch.compile / torch.export instead
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), want)


@pytest.mark.parametrize("kind", KINDS)
def test_basis_flops_are_counted_per_input_value(kind):
    with torch.device("meta"):  # as `kanvision params` counts: shapes only, no kernel runs (nor compiles)
        layer = get_kind(kind).build(8, 16)
        x = torch.empty(7, 8)
    per_value = get_kind(kind).basis_flops(layer)
    assert isinstance(per_value, int) and per_value > 0
    flops = count_flops(layer, x)
    assert flops["basis"] == 7 * 8 * per_value
    assert flops["matmul"] >= 2 * 7 * 8 * 6  # at least one multiply-add per edge and row


@pytest.mark.parametrize("kind", KINDS)
def test_memory_model_equals_what_autograd_saves_per_row(kind):
    """Kind.memory(layer): floats saved for backward per input row. Measured as the growth of the saved storages
    from N to 2N rows, so per-call constants (a grid, a width) do not count."""
    record = get_kind(kind)
    layer = layer_of(kind, 16, 24)
    sizes = []
    for n in (64, 128):
        x = inputs(kind, n, 16).requires_grad_()
        nbytes, _ = saved_tensor_bytes(layer, lambda: layer(x))
        sizes.append(nbytes)
    assert (sizes[1] - sizes[0]) / 64 / 4 == record.memory(layer)


def _hvp_and_finite_difference(kind: str):
    """H v of 0.5 |layer(x)|^2 w.r.t. the weights on the kind's HVP path, and its central difference of gradients."""
    record = get_kind(kind)
    layer = layer_of(kind, 8, 8).double()
    if record.hvp_impl is not None:
        layer.impl = record.hvp_impl
    x = inputs(kind, 9, 8, torch.float64)
    params = [p for p in layer.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]

    def grads():
        loss = 0.5 * layer(x).square().sum()
        return torch.autograd.grad(loss, params, create_graph=True)

    g = grads()
    hv = torch.autograd.grad(g, params, grad_outputs=v)
    eps = 1e-7  # small: |x|-type kinks (GR-KAN's |b_k|, some near 0 at init) must not fall inside the step
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(eps * d)
    plus = [t.detach() for t in grads()]
    with torch.no_grad():
        for p, d in zip(params, v):
            p.sub_(2 * eps * d)
    minus = [t.detach() for t in grads()]
    fd = [(a - b) / (2 * eps) for a, b in zip(plus, minus)]
    return hv, fd


@pytest.mark.parametrize("kind", KINDS)
def test_hessian_vector_product_on_the_hvp_path(kind):
    hv, fd = _hvp_and_finite_difference(kind)
    for a, b in zip(hv, fd):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", [k for k in KINDS if get_kind(k).grid_update])
def test_grid_update_keeps_the_function_on_its_data(kind, tiny_model):
    from kanvision.train.grid_update import grid_layers, update_grids

    torch.manual_seed(0)
    model = tiny_model("kan_mixer_tiny_p4_32", kind, num_classes=10).eval()
    images = torch.randn(8, 3, 32, 32)
    before = [tuple(t.clone() for t in layer.empty_grid_state()) for layer in grid_layers(model)]
    with torch.no_grad():  # features: timm's Mixer starts with a zero head
        want = model.forward_features(images)
    assert update_grids(model, images) == len(grid_layers(model)) > 0
    with torch.no_grad():
        got = model.forward_features(images)
    assert all(before[0][0].shape == layer.empty_grid_state()[0].shape for layer in grid_layers(model))
    # Refitting to the data's range keeps the function on that data (least squares), not bit for bit, and does
    # change it (new knots).
    assert 0 < (got - want).abs().max() < 0.1 * want.abs().max()


@pytest.mark.parametrize("kind", [k for k in KINDS if get_kind(k).match_params])
def test_match_params_sizes_an_mlp_within_one_percent(kind):
    with torch.device("meta"):
        kan = timm.create_model("kan_mixer_tiny_p4_32", kan=kind, num_classes=10)
        mlp = timm.create_model("kan_mixer_tiny_p4_32", kan="none", match_params=kind, num_classes=10)
    a, b = count_parameters(kan)["trainable"], count_parameters(mlp)["trainable"]
    assert count_parameters(mlp)["kan"] == 0
    assert abs(a - b) <= 0.01 * a, (a, b)


@pytest.mark.parametrize("kind", slow_after(KINDS))
@pytest.mark.parametrize("name,extra", ZOO, ids=[z[0] for z in ZOO])
def test_every_zoo_model_builds_and_runs_with_every_kind(name, extra, kind):
    torch.manual_seed(0)
    model = timm.create_model(name, kan=kind, num_classes=10, **extra)
    counts = count_parameters(model)
    assert counts["kan"] > 0
    nn.init.normal_(model.get_classifier().weight)  # timm's Mixer zero-inits its head: no gradient would flow
    out = model(torch.randn(2, 3, 32, 32))
    out.logsumexp(-1).sum().backward()
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # DDP fails on parameters without gradients: every trainable parameter takes part in the loss.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_kinds_table_lists_every_kind(capsys):
    from kanvision.cli import main

    assert main(["kinds"]) == 0
    out = capsys.readouterr().out
    for name in KINDS:
        record = get_kind(name)
        assert f"`{name}`" in out and f"{record.params(192, 192, dict(record.defaults)):,}" in out


# ------------------------------------------------------------------ a user's own kind, registered from outside

class PolyKAN(nn.Module):
    """A short custom basis (the docs' example): y_o = sum_{i,d} C[o,i,d] tanh(x_i)^d, d = 0..degree."""

    def __init__(self, in_features, out_features, degree: int = 3, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.degree = in_features, out_features, int(degree)
        self.coeffs = nn.Parameter(torch.randn(out_features, in_features, degree + 1, device=device, dtype=dtype)
                                   / math.sqrt(in_features * (degree + 1)))

    def forward(self, x):
        t = torch.tanh(x)
        powers = torch.stack([t ** d for d in range(self.degree + 1)], dim=-1)  # (..., in, d+1)
        return torch.einsum("...id,oid->...o", powers, self.coeffs)


def test_a_user_registers_a_kind_without_editing_kanvision(monkeypatch, tiny_model):
    monkeypatch.setattr(registry, "_loaded", dict(registry._loaded))  # leave the registry as it was afterwards
    record = register_kind(Kind(
        name="poly", layer=PolyKAN, title="tanh-polynomial", formula="y = sum C[o,i,d] tanh(x_i)^d",
        source="tests/test_kinds.py", params=lambda i, o, kw: i * o * (int(kw.get("degree", 3)) + 1),
        basis_flops=lambda layer: 2 * layer.degree + 1, memory=lambda layer: layer.in_features))
    assert "poly" in available_kinds() and get_kind("poly") is record
    model = tiny_model("kan_mixer_tiny_p4_32", "poly", num_classes=10)
    assert isinstance(model.blocks[0].mlp_channels.fc1, PolyKAN)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="exists already"):
        register_kind(Kind(name="poly", layer=PolyKAN, title="t", formula="f", source="s",
                           params=lambda i, o, kw: 0, basis_flops=lambda layer: 0))


def test_a_kind_from_an_entry_point_is_registered(monkeypatch):
    class EP:
        name, value = "epkind", "their_package.kinds:KIND"

        def load(self):
            return Kind(name="epkind", layer=PolyKAN, title="t", formula="f", source="their package",
                        params=lambda i, o, kw: i * o * 4, basis_flops=lambda layer: 7)

    monkeypatch.setattr(registry, "_loaded", dict(registry._loaded))
    monkeypatch.setattr(registry, "_entry_points_read", False)
    import importlib.metadata as md
    monkeypatch.setattr(md, "entry_points", lambda group=None: [EP()] if group == registry.ENTRY_POINT_GROUP else [])
    assert "epkind" in available_kinds()
    assert get_kind("epkind").params(2, 3, {}) == 24
