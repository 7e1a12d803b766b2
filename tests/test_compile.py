"""torch.compile: whole models (every zoo family x kind) match eager with no graph break, the per-layer
compiled kernels recompile a bounded number of times in a real fit, and a kernel that cannot compile falls
back on its own, saying why, without turning every other kernel eager."""
import warnings

import pytest
import timm
import torch
from torch._dynamo.utils import counters

import kanvision  # noqa: F401  registers the zoo
from kanvision.train.grid_update import grid_layers, update_grids
from kanvision.cli import main
from kanvision.kinds import compile as kcompile
from marks import slow_after

# Compilation is the subject here: the KAN kernels compile as in a user's run (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("compiled_kernels")

FAMILIES = [("kan_mixer_tiny_p4_32", dict(num_blocks=1)), ("kan_convmixer_256_8", dict(depth=1)),
            ("kan_deit_tiny_patch4_32", dict(depth=1))]


def build(name, kind, extra, kan_kwargs=None):
    torch.manual_seed(0)
    model = timm.create_model(name, kan=kind, num_classes=10, kan_kwargs=kan_kwargs, **extra)
    with torch.no_grad():  # timm zero-initialises some heads: outputs would compare equal trivially
        model.get_classifier().weight.normal_(0, 0.1)
    return model


def outputs_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.pow(2).mean().backward()
    return y.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()
                        if p.grad is not None}


def assert_close(model, compiled, x):
    y0, g0 = outputs_and_grads(model, x)
    counters.clear()  # from here on: the compiled model's graphs only (eager runs compile the layer kernels)
    y1, g1 = outputs_and_grads(compiled, x)
    assert y0.abs().max() > 1e-3
    assert torch.allclose(y1, y0, rtol=1e-4, atol=1e-5)
    assert g1.keys() == g0.keys()
    for name in g0:
        assert torch.allclose(g1[name], g0[name], rtol=1e-3, atol=1e-5 * max(1.0, float(g0[name].abs().max()))), name


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bspline", "rswaf"])
@pytest.mark.parametrize("name,extra", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_whole_model_compile_matches_eager_without_graph_breaks(name, extra, kind):
    model = build(name, kind, extra)  # default kan_kwargs: per-layer kernels compiled where possible
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    assert_close(model, torch.compile(model), x)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("kind", slow_after(["rswaf", "bspline"]))
@pytest.mark.parametrize("compile_kernels", [True, False])
def test_whole_model_trace_with_and_without_kernel_compile(kind, compile_kernels):
    # aot_eager: the same dynamo + autograd tracing as inductor, without code generation (cheap).
    name, extra = FAMILIES[0]
    model = build(name, kind, dict(extra, num_blocks=2), kan_kwargs={"compile": compile_kernels})
    torch._dynamo.reset()
    assert_close(model, torch.compile(model, backend="aot_eager"), torch.randn(3, 3, 32, 32))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


@pytest.mark.slow
def test_two_compiled_models_interleaved_keep_their_own_buffers():
    # Once a B-spline and an RSWAF model shared scratch memory that a compiled backward still needed: run both
    # forwards before either backward, as a GAN / distillation loop would, and compare with eager.
    name, extra = FAMILIES[0]
    models = [build(name, kind, extra) for kind in ("bspline", "rswaf")]
    x = torch.randn(2, 3, 32, 32)
    want = [outputs_and_grads(m, x)[1] for m in models]
    for m in models:
        m.zero_grad(set_to_none=True)
    compiled = [torch.compile(m, backend="aot_eager") for m in models]
    losses = [c(x).pow(2).mean() for c in compiled]
    for loss in losses:
        loss.backward()
    for m, w in zip(models, want):
        for n, p in m.named_parameters():
            assert torch.allclose(p.grad, w[n], rtol=1e-4, atol=1e-6), n


@pytest.mark.slow
def test_compiled_model_follows_a_grid_update():
    # The uniform-grid flag is Python state: a grid update recompiles once, then the general kernel is traced.
    name, extra = FAMILIES[0]
    model = build(name, "bspline", extra)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    assert_close(model, compiled, x)
    update_grids(model, torch.randn(4, 3, 32, 32))
    assert not any(layer.grid_uniform for layer in grid_layers(model))
    assert_close(model, compiled, x)


@pytest.mark.slow
def test_short_fit_recompiles_are_bounded(tmp_path, write_config):
    # 40 training images in batches of 16 (last batch 8), validation batches of 10, sanity check and a grid
    # update at step 0 (uniform -> general kernels): every kernel variant ends with exactly one graph.
    kcompile._VARIANTS.clear(), kcompile._CODES.clear(), kcompile._FAILURES.clear()
    torch._dynamo.reset()
    cfg = write_config(tmp_path, model__grid_update_every=1, model__grid_update_until=0, data__synthetic_size=40,
                       trainer__max_epochs=2, trainer__default_root_dir=str(tmp_path))
    main(["fit", "--config", cfg, "--name=rc"])
    graphs = kcompile.kernel_graphs()
    print("compiled graphs per kernel variant:", {key[2:]: n for key, n in graphs.items()})  # shown with -s
    assert not kcompile.compile_failures()
    kinds = {(key[1], key[5]) for key in graphs}  # (function, uniform)
    assert {k[0] for k in kinds} == {"dense_features", "dense_input_grad"}
    assert {k[1] for k in kinds} == {True, False}  # both before and after the grid update
    # Batch sizes 16, 8 (last) and 10 (validation): one graph per variant, the batch dimension symbolic.
    assert set(graphs.values()) == {1}, graphs
    assert len(graphs) <= 8


def test_a_failing_variant_warns_once_with_its_cause_and_others_still_compile(monkeypatch):
    kcompile._FAILURES.clear()
    real = torch.compile

    def fake_compile(fn, **kw):
        if "float64" in fn.__name__:
            def broken(*a, **k):
                raise RuntimeError("no C++ compiler for this variant\nlong traceback")
            return broken
        return real(fn, backend="eager", **kw)

    monkeypatch.setattr(kcompile.torch, "compile", fake_compile)

    def kernel(x):
        return x * 2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert kcompile.run_compiled(kernel, ("t", torch.float64), (torch.ones(2, dtype=torch.float64),)) is None
            assert kcompile.run_compiled(kernel, ("t", torch.float32), (torch.ones(2),)).tolist() == [2.0, 2.0]
    messages = [str(w.message) for w in caught if "KAN kernel" in str(w.message)]
    assert len(messages) == 1 and "no C++ compiler for this variant" in messages[0] and "float64" in messages[0]
    assert "long traceback" not in messages[0]
    assert list(kcompile.compile_failures().values()) == ["RuntimeError: no C++ compiler for this variant"]
    kcompile._FAILURES.clear()


def test_compile_opt_out_and_availability(monkeypatch):
    kcompile.compile_supported.cache_clear()
    monkeypatch.setenv("KANVISION_COMPILE", "0")
    assert kcompile.compile_supported("cpu") == (False, "KANVISION_COMPILE=0")
    assert not kcompile.use_compiled(None, torch.device("cpu"))
    monkeypatch.delenv("KANVISION_COMPILE")
    kcompile.compile_supported.cache_clear()
    assert not kcompile.use_compiled(False, torch.device("cpu"))
    assert kcompile.compile_supported("meta")[0] is False
    kcompile._TOLD.clear()
    with pytest.warns(RuntimeWarning, match="compile=True.*run eager on meta: kernels are compiled for cpu and cuda"):
        assert not kcompile.use_compiled(True, torch.device("meta"))
    kcompile.compile_supported.cache_clear()
