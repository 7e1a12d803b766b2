"""Fused Triton KAN kernels (kinds/bspline/triton.py, kinds/rswaf/triton.py; issue 23, item 3) against the reference
layers: forward, input gradient and every weight gradient, through the layers' own dispatch (compile="triton").

They run on the CPU in Triton's interpreter. TRITON_INTERPRET=1 must be set before triton is first imported, and
importing kanvision already imports it (torch._dynamo, the kinds registry), so this file runs itself once more in
a child pytest process with TRITON_INTERPRET=1 (one process for all tests); each test of the parent reports the
outcome of its namesake there. test_triton_kernels_on_cuda runs the compiled kernels where a GPU is present.

Tolerances, as fractions of the largest reference value: float64 runs the kernels' own float64 arithmetic: 1e-12.
float32: 5e-6 (basis and products in float32, fp32 accumulation). bf16 / fp16 autocast (features and weights
rounded to 8 / 11 significant bits, fp32 accumulation; the interpreter truncates where a GPU rounds): 2^-6 / 2^-9;
a bf16 layer (its parameters, inputs and gradients bf16 too): 2^-4. A wrong basis, knot, slot or sign errs by
tens of percent (a flipped derivative sign: 50% and more).
"""
from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

from kanvision.kinds.bspline import KIND as BSPLINE_KIND
from kanvision.kinds import dispatch
from kanvision.kinds.rswaf import KIND as RSWAF_KIND
from kanvision.layers import BSplineKAN, RSWAFKAN

ROOT = Path(__file__).resolve().parents[1]
INNER = os.environ.get("KANVISION_TRITON_INNER") == "1"  # the child process, under the interpreter
bt = pytest.importorskip("kanvision.kinds.bspline.triton")
rt = pytest.importorskip("kanvision.kinds.rswaf.triton")
tc = pytest.importorskip("kanvision.kinds.triton_common")  # the launch helpers both use
_RESULTS: dict | None = None


def _inner_results() -> dict:
    """{test id: (outcome, text)} of this file run under TRITON_INTERPRET=1 (once per parent process)."""
    global _RESULTS
    if _RESULTS is None:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.xml"
            # KANVISION_COMPILE=0: the fallbacks tested there run eager instead of spending minutes in inductor.
            env = {**os.environ, "TRITON_INTERPRET": "1", "KANVISION_TRITON_INNER": "1", "KANVISION_COMPILE": "0"}
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                                   f"--junitxml={report}"], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=600)
            _RESULTS = {"": ("log", proc.stdout[-4000:] + proc.stderr[-2000:])}
            if report.exists():
                for case in ET.parse(report).getroot().iter("testcase"):
                    bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
                    outcome = bad[0].tag if bad else "passed"
                    text = (bad[0].get("message", "") + "\n" + (bad[0].text or "")) if bad else ""
                    _RESULTS[case.get("name")] = (outcome, text[-4000:])
    return _RESULTS


def interpreted(test):
    """Run `test` here in the child process; in the parent, report the child's outcome for the same test id."""
    if INNER:
        return test

    @functools.wraps(test)
    def parent(*args, **kwargs):
        name = os.environ["PYTEST_CURRENT_TEST"].split("::")[-1].rsplit(" (", 1)[0]
        results = _inner_results()
        outcome, text = results.get(name, ("missing", results[""][1]))
        if outcome == "skipped":
            pytest.skip(text)
        assert outcome == "passed", f"{name} under TRITON_INTERPRET=1: {outcome}\n{text}"
    return parent


@pytest.fixture
def spy(monkeypatch):
    """Counts the Triton kernel calls of both kinds (so a silent fallback cannot pass for the kernels)."""
    calls = {}
    for mod, tag in ((bt, "bspline"), (rt, "rswaf")):
        for name in ("forward", "input_grad", "weight_grad"):
            def counted(*args, _fn=getattr(mod, name), _key=f"{tag}.{name}", **kwargs):
                calls[_key] = calls.get(_key, 0) + 1
                return _fn(*args, **kwargs)
            monkeypatch.setattr(mod, name, counted)
    return calls


def run(layer, x, grad, autocast=None):
    """(y, dL/dx, {parameter: grad}) for the cotangent grad; warnings are errors (a fallback warns)."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext():
            y = layer(x)
        y.backward(grad.to(y.dtype))
    return y.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}


def assert_close(got, want, rel, what):
    scale = want.abs().max().item()
    err = (got.double() - want.double()).abs().max().item()
    assert err <= rel * scale + 1e-300, f"{what}: max error {err:.3g} > {rel:g} x {scale:.3g}"


def compare(fast, ref, x, grad, rel, autocast=None):
    """Forward and every gradient of `fast` on x against `ref` (float64); returns fast's output."""
    yf, gxf, gpf = run(fast, x, grad, autocast)
    yr, gxr, gpr = run(ref, x.double(), grad.double())
    assert gxf.dtype == x.dtype and set(gpf) == set(gpr)
    assert_close(yf, yr, rel, "y")
    assert_close(gxf, gxr, rel, "dL/dx")
    for name, g in gpr.items():
        assert gpf[name].dtype == next(fast.parameters()).dtype
        # LayerNorm's own parameter gradients in a bf16 layer are torch's bf16 reduction over the rows, not ours.
        loose = 2.0 ** -3 if name.startswith("layernorm") and gpf[name].dtype == torch.bfloat16 else rel
        assert_close(gpf[name], g, loose, f"dL/d{name}")
    return yf


def bspline_pair(i, o, dtype=torch.float64, **kw):
    ref = BSplineKAN(i, o, impl="reference", dtype=torch.float64, **kw)
    with torch.no_grad():  # the default spline init is near-zero noise: give the spline branch real weight
        ref.spline_weight.normal_(0, 0.5)
    fast = BSplineKAN(i, o, compile="triton", dtype=dtype, **kw)
    fast.load_state_dict(ref.state_dict())
    assert fast.grid_uniform
    return fast, ref


def rswaf_pair(i, o, dtype=torch.float64, **kw):
    ref = RSWAFKAN(i, o, impl="reference", dtype=torch.float64, **kw)
    with torch.no_grad():  # a LayerNorm that is not the identity
        ref.layernorm.weight.uniform_(0.5, 1.5)
        ref.layernorm.bias.uniform_(-0.3, 0.3)
    fast = RSWAFKAN(i, o, compile="triton", dtype=dtype, **kw)
    fast.load_state_dict(ref.state_dict())
    return fast, ref


def inputs(n, i, o, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # ~1.4 sigma: inside the grid, between its outer knots, and beyond every knot (bases all zero there)
    return torch.randn(n, i, generator=gen, dtype=torch.float64) * 1.4, torch.randn(n, o, generator=gen,
                                                                                    dtype=torch.float64)


SHAPES = {"ragged-16": ((18, 17, 20), 16), "ragged-32": ((21, 33, 17), 32), "single-tile": ((5, 7, 3), 32)}


@interpreted
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("kind", ["bspline", "rswaf"])
def test_triton_float64_matches_reference(kind, shape, spy, monkeypatch):
    """Ragged shapes (rows, inputs, outputs not multiples of the tiles, several tiles each way): the kernels'
    features are the reference's, so forward and all gradients agree to float64 rounding."""
    (n, i, o), block = SHAPES[shape]
    monkeypatch.setattr(tc, "INTERPRETER_BLOCKS", dict.fromkeys(tc.INTERPRETER_BLOCKS, block))
    torch.manual_seed(1)
    fast, ref = bspline_pair(i, o) if kind == "bspline" else rswaf_pair(i, o)
    x, grad = inputs(n, i, o)
    compare(fast, ref, x, grad, 1e-12)
    assert spy == {f"{kind}.forward": 1, f"{kind}.input_grad": 1, f"{kind}.weight_grad": 1}


BSPLINE_VARIANTS = {
    "order1-relu": dict(spline_order=1, base_activation=nn.ReLU),
    "order2-gelu": dict(spline_order=2, base_activation=nn.GELU, grid_size=4),
    "order3-gelu-tanh": dict(base_activation=lambda: nn.GELU(approximate="tanh"), grid_range=(-2, 1)),
    "order4-tanh": dict(spline_order=4, base_activation=nn.Tanh, grid_size=3),
    "identity-no-scaler": dict(base_activation=nn.Identity, enable_standalone_scale_spline=False),
}


@interpreted
@pytest.mark.parametrize("variant", sorted(BSPLINE_VARIANTS))
def test_triton_bspline_orders_activations_and_grids(variant, spy):
    """Every activation the kernels implement, spline orders 1-4 (odd and even: the two piece layouts of the
    symmetric cardinal B-spline), another grid size and range, and a layer without the standalone scaler."""
    torch.manual_seed(2)
    fast, ref = bspline_pair(6, 5, **BSPLINE_VARIANTS[variant])
    x, grad = inputs(11, 6, 5, seed=3)
    compare(fast, ref, x, grad, 1e-12)
    assert spy == {"bspline.forward": 1, "bspline.input_grad": 1, "bspline.weight_grad": 1}


# Observed worst errors (2-core CPU, interpreter): float32 1e-6, bf16 autocast 7e-3, fp16 autocast 5.5e-4, bf16 layer
# (bf16 parameters, inputs, outputs and gradients) 2.2e-2: each tolerance is 2-5x that.
LOW = {"float32": (torch.float32, None, 5e-6), "bf16-autocast": (torch.float32, torch.bfloat16, 2.0 ** -6),
       "fp16-autocast": (torch.float32, torch.float16, 2.0 ** -9), "bf16-layer": (torch.bfloat16, None, 2.0 ** -4)}


@interpreted
@pytest.mark.parametrize("precision", sorted(LOW))
@pytest.mark.parametrize("kind", ["bspline", "rswaf"])
def test_triton_low_precision(kind, precision, spy):
    """float32 layers, bf16/fp16 autocast (features and matmul in the autocast dtype, fp32 accumulation, output in
    that dtype) and a bf16 layer with bf16 inputs, against the float64 reference; each gradient in its input's
    dtype."""
    dtype, autocast, rel = LOW[precision]
    torch.manual_seed(3)
    fast, ref = bspline_pair(20, 19, dtype) if kind == "bspline" else rswaf_pair(20, 19, dtype)
    x, grad = inputs(29, 20, 19, seed=4)
    y = compare(fast, ref, x.to(dtype), grad, rel, autocast)
    assert y.dtype == (autocast or dtype)
    assert spy == {f"{kind}.forward": 1, f"{kind}.input_grad": 1, f"{kind}.weight_grad": 1}


@interpreted
@pytest.mark.parametrize("kind", ["bspline", "rswaf"])
def test_triton_weight_gradient_row_splits(kind):
    """The weight gradient split into row ranges (partial tiles summed afterwards, no atomics) equals the unsplit
    one: 37 rows in 3 ranges of 13 (not a multiple of the row block), 9 rows in 4 ranges of 3 (the last one past
    the last row, all zeros); checked on the kernels directly."""
    torch.manual_seed(4)
    x, grad = inputs(37, 20, 19, seed=5)
    if kind == "bspline":
        lo, inv_h = bspline_pair(20, 19)[1].fast_spec().dense
        kernel = functools.partial(bt.weight_grad, lo=lo, inv_h=inv_h, order=3, act="silu")
    else:
        layer = rswaf_pair(20, 19)[1]
        x = layer.layernorm(x).detach()
        kernel = functools.partial(rt.weight_grad, centres=layer.rbf.grid, inv_h=1 / layer.rbf.denominator)
    for rows, splits in ((37, 3), (9, 4)):
        whole = kernel(x[:rows], grad[:rows], splits=1)
        assert_close(kernel(x[:rows], grad[:rows], splits=splits), whole, 1e-13, f"{splits} row ranges")


@interpreted
@pytest.mark.parametrize("kind", ["bspline", "rswaf"])
def test_triton_gradcheck(kind):
    """torch.autograd.gradcheck of the Triton path (float64) in the input and a weight."""
    torch.manual_seed(5)
    fast = bspline_pair(3, 2)[0] if kind == "bspline" else rswaf_pair(3, 2)[0]
    weight = fast.base_weight if kind == "bspline" else fast.spline_linear.weight
    name = "base_weight" if kind == "bspline" else "spline_linear.weight"
    x = inputs(4, 3, 2, seed=6)[0].requires_grad_()

    def f(x, w):
        return torch.func.functional_call(fast, {name: w}, (x,))

    # fast_mode: random projections of the Jacobian (a few kernel calls under the slow interpreter, not one per entry)
    assert torch.autograd.gradcheck(f, (x, weight.detach().clone().requires_grad_()), fast_mode=True)


@interpreted
@pytest.mark.parametrize("kind", ["bspline", "rswaf"])
def test_triton_failure_warns_once_and_falls_back(kind, monkeypatch):
    """A kernel that fails (here: raises) costs one warning; that call and every later one run today's kernels
    with the same results."""
    monkeypatch.setattr(dispatch, "_TRITON_FAILED", {})
    module = bt if kind == "bspline" else rt

    def broken(*args, **kwargs):
        raise RuntimeError("simulated compile error")

    monkeypatch.setattr(module, "forward", broken)
    torch.manual_seed(6)
    fast, ref = bspline_pair(6, 5) if kind == "bspline" else rswaf_pair(6, 5)
    x, grad = inputs(7, 6, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert_close(fast(x), ref(x).detach(), 1e-12, "fallback y")
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1 and "Triton" in lines[0] and "simulated compile error" in lines[0], lines


@interpreted
def test_triton_bspline_non_uniform_knots_fall_back(spy):
    """After update_grid the knots are not uniform: compile="triton" says so once and runs today's kernels."""
    torch.manual_seed(7)
    fast, ref = bspline_pair(6, 5)
    x, grad = inputs(64, 6, 5, seed=8)
    ref.update_grid(x)
    fast.load_state_dict(ref.state_dict())
    assert not fast.grid_uniform
    with pytest.warns(RuntimeWarning, match="non-uniform knots"):
        fast(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert_close(fast(x), ref(x).detach(), 1e-12, "y")
    assert not spy


def test_triton_compile_switch_and_registry():
    """compile keeps None / True / False and takes "auto" / "triton" / "compiled" / "eager"; anything else is one
    ValueError line; the automatic choice runs no Triton kernel on the CPU; both kinds' records say "triton"."""
    for value, stored in [(None, None), (True, True), (False, False), ("auto", None), ("triton", "triton"),
                          ("compiled", True), ("eager", False), ("Triton", "triton")]:
        assert BSplineKAN(4, 3, compile=value).compile == stored
        assert RSWAFKAN(4, 3, compile=value).compile == stored
    for cls in (BSplineKAN, RSWAFKAN):
        with pytest.raises(ValueError, match=r"compile must be None, True, False or one of 'auto', 'triton'") as e:
            cls(4, 3, compile="fused")
        assert "\n" not in str(e.value)
    x = torch.randn(5, 4)
    assert dispatch.triton_kernels("BSplineKAN", "kanvision.kinds.bspline.triton", x, x.dtype, None, None) is None
    assert dispatch.triton_kernels("BSplineKAN", "kanvision.kinds.bspline.triton", x, x.dtype, True, None) is None
    assert BSPLINE_KIND.fused == "triton" and RSWAF_KIND.fused == "triton"


AOT = [  # (module, kernel, constexprs, dtype of weights / dy / y): the default variants plus other branches
    (bt, "_forward_kernel", dict(ORDER=3, SLOTS=9, ACT="silu", BLOCK_M=64, BLOCK_O=64, BLOCK_I=32), "bf16"),
    (bt, "_input_grad_kernel", dict(ORDER=3, SLOTS=9, ACT="silu", BLOCK_M=32, BLOCK_I=64, BLOCK_O=64), "bf16"),
    (bt, "_weight_grad_kernel", dict(ORDER=3, SLOTS=9, ACT="silu", BLOCK_O=64, BLOCK_I=64, BLOCK_N=32), "bf16"),
    (bt, "_input_grad_kernel", dict(ORDER=2, SLOTS=8, ACT="gelu_tanh", BLOCK_M=32, BLOCK_I=64, BLOCK_O=64), "fp16"),
    (bt, "_weight_grad_kernel", dict(ORDER=1, SLOTS=7, ACT="gelu", BLOCK_O=64, BLOCK_I=64, BLOCK_N=32), "fp32"),
    (rt, "_forward_kernel", dict(CENTRES=8, BLOCK_M=64, BLOCK_O=64, BLOCK_I=32), "bf16"),
    (rt, "_input_grad_kernel", dict(CENTRES=8, BLOCK_M=32, BLOCK_I=64, BLOCK_O=64), "bf16"),
    (rt, "_weight_grad_kernel", dict(CENTRES=8, BLOCK_O=64, BLOCK_I=64, BLOCK_N=32), "bf16"),
]


@pytest.mark.skipif(INNER, reason="compiles, not interpreted: runs in the parent process")
def test_triton_kernels_compile_for_sm90():
    """The interpreter runs the kernels' Python, not Triton's compiler (constexpr handling, runtime branches, layouts):
    here each kernel is compiled ahead of time for an H100/H200 (sm_90) down to a cubin, no GPU needed."""
    compiler = pytest.importorskip("triton.compiler")
    target = pytest.importorskip("triton.backends.compiler").GPUTarget("cuda", 90, 32)
    for module, name, consts, low in AOT:
        fn = getattr(module, name)
        consts = dict(consts, PREC="ieee", DOT_F32=False)
        sig = {a: "constexpr" if a in consts else f"*{low}" if a in ("w_ptr", "g_ptr", "y_ptr") else
               "*fp32" if a.endswith("_ptr") else "i32" for a in fn.arg_names}
        kernel = compiler.compile(compiler.ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                                  options=dict(num_warps=4, num_stages=3))
        assert kernel.asm["cubin"], name


@pytest.mark.skipif(INNER or not torch.cuda.is_available(), reason="needs a CUDA GPU (the compiled kernels)")
@pytest.mark.parametrize("kind", ["bspline", "rswaf"])
def test_triton_kernels_on_cuda(kind, spy):
    """On a GPU: the layer picks the Triton kernels by itself (compile=None), and they match the float64 reference
    in float32 and under bf16 autocast, at ragged shapes."""
    torch.manual_seed(8)
    for shape in ((37, 20, 19), (1000, 192, 200)):
        n, i, o = shape
        ref = bspline_pair(i, o)[1] if kind == "bspline" else rswaf_pair(i, o)[1]
        fast = (BSplineKAN if kind == "bspline" else RSWAFKAN)(i, o, device="cuda")
        fast.load_state_dict(ref.state_dict())
        x, grad = inputs(n, i, o, seed=9)
        for autocast, rel in ((None, 5e-6), (torch.bfloat16, 2.0 ** -6)):
            fast.zero_grad(set_to_none=True)
            xc = x.float().cuda().requires_grad_()
            with torch.autocast("cuda", dtype=autocast) if autocast else contextlib.nullcontext():
                y = fast(xc)
            y.backward(grad.cuda().to(y.dtype))
            yr, gxr, gpr = run(ref, x, grad)
            assert_close(y.cpu(), yr, rel, "y")
            assert_close(xc.grad.cpu(), gxr, rel, "dL/dx")
            for name, p in fast.named_parameters():
                if name in gpr:
                    assert_close(p.grad.cpu(), gpr[name], rel, name)
    assert spy[f"{kind}.forward"] == 4 and spy[f"{kind}.weight_grad"] == 4
