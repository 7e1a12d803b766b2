"""Memory analysis: CPU saved-tensor measurement against byte counts worked out by hand, cap-as-OOM, and the
paper's Eq. (1)/(2) (Pal & Das, Section 3.2) term by term against values worked out by hand.

The loss in the measurement tests is `out.sum()`, whose backward saves nothing, so every saved byte comes from
the model. Float32 throughout: 4 bytes per element. N = rows.
"""
import re

import pytest
import torch
from torch import nn

from kanvision.analysis.memory import (analytic_estimate, kan_layer_estimate, measure_step, memory_sweep,
                                       paper_eq2, paper_estimate, paper_model_estimate, set_kan_impl)
from kanvision.layers import BSplineKAN, RSWAFKAN
from kanvision.kinds.workspace import scratch_bytes

N = 20


def _sum_loss(out, _y):
    return out.sum()


def _measure(model, in_features, rows=N):
    torch.manual_seed(0)
    return measure_step(model, torch.randn(rows, in_features), torch.zeros(rows, dtype=torch.long), loss_fn=_sum_loss)


def _param_bytes(*shapes):
    total = 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        total += 4 * n
    return total


def test_mlp_saves_its_linear_inputs_and_tanh_output():
    # Linear(12,16) keeps its input x (N x 12) for the weight gradient; Tanh keeps its output (N x 16), which is
    # also the second Linear's input (one storage). 28 elements per row.
    r = _measure(nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)), 12)
    assert r["activation_bytes"] == 4 * N * (12 + 16)
    params = _param_bytes((16, 12), (16,), (3, 16), (3,))
    assert r["scratch_bytes"] == 0
    assert r["bytes"] == 2 * params + 4 * N * (12 + 16)  # parameters + gradients + saved


@pytest.mark.parametrize("compile", [False, None])
def test_fast_bspline_saves_only_its_input(compile, request):
    if compile is None:  # the automatic choice: compiled kernels where they can be, as in a user's run
        request.getfixturevalue("compiled_kernels")
    # The fast layer's promise: backward keeps x (N x 12) and rebuilds the features. With the Linear(10, 12) in
    # front, the Linear keeps its input (N x 10) and the KAN layer keeps the Linear's output (N x 12).
    model = nn.Sequential(nn.Linear(10, 12), BSplineKAN(12, 16, compile=compile))
    r = _measure(model, 10)
    assert r["activation_bytes"] == 4 * N * (10 + 12)
    # Scratch: one (N, 1 + G + k, in) = (20, 9, 12) float32 feature buffer.
    assert r["scratch_bytes"] == 4 * N * 9 * 12
    params = _param_bytes((12, 10), (12,), (16, 12), (16, 12, 8), (16, 12))  # base weight, spline weight, scaler
    assert r["bytes"] == 2 * params + 4 * N * (10 + 12) + 4 * N * 9 * 12


def test_reference_bspline_stores_the_dense_basis():
    # efficient-kan-style storage (impl="reference") on an input that needs no gradient: the recursion itself is
    # not differentiated, so what is kept is what the two products need for the weight gradients: SiLU(x)
    # (N x 12) and the dense basis (N x 12 x (G + k) = N x 12 x 8). 12 * 9 = 108 elements per row, 9x the fast path.
    r = _measure(nn.Sequential(BSplineKAN(12, 16, impl="reference")), 12)
    assert r["activation_bytes"] == 4 * N * 12 * 9
    assert r["scratch_bytes"] == 0
    fast = _measure(nn.Sequential(BSplineKAN(12, 16, compile=False)), 12)
    assert fast["activation_bytes"] == 4 * N * 12


def test_fast_rswaf_saved_tensors():
    # Linear(10, 12): its input, N x 10. RSWAF: LayerNorm keeps its input (N x 12) and per-row mean and 1/std
    # (2 x N); the RSWAF Function keeps the normalised u (N x 12) and the 8 centres + the width h (9 elements,
    # buffers, not parameters, so they count). Scratch: two (N, 12, 8) float32 buffers.
    r = _measure(nn.Sequential(nn.Linear(10, 12), RSWAFKAN(12, 16, compile=False)), 10)
    assert r["activation_bytes"] == 4 * (N * 10 + N * 12 + 2 * N + N * 12 + 9)
    assert r["scratch_bytes"] == 2 * 4 * N * 12 * 8


def test_saved_bytes_scale_with_rows_exactly():
    build = lambda: nn.Sequential(nn.Linear(10, 12), BSplineKAN(12, 16, compile=False))  # noqa: E731
    small, big = _measure(build(), 10, rows=4), _measure(build(), 10, rows=64)
    assert (small["activation_bytes"], big["activation_bytes"]) == (4 * 4 * 22, 4 * 64 * 22)


def test_analytic_estimate_sums_layers_with_rows_from_the_forward():
    # Rows per image come from a forward hook (7 tokens here), times the batch size; each layer's own G, S.
    model = nn.Sequential(BSplineKAN(6, 5, grid_size=4, spline_order=2), RSWAFKAN(5, 3, num_grids=6))
    est = analytic_estimate(model, torch.randn(2, 7, 6), batch_size=4)
    a, b = kan_layer_estimate(6, 28, 4, 2), kan_layer_estimate(5, 28, 6, 0)
    assert est["kan_layers"] == 2
    assert est["forward_bytes"] == 4 * (a["forward"] + b["forward"])
    assert est["backward_bytes"] == 4 * (a["backward"] + b["backward"])
    assert est["kan_param_bytes"] == 4 * sum(p.numel() for p in model.parameters())


# --- The paper's Eq. (1) and (2) (Section 3.2) and its Section 3.1 parameter counts ---
# Eq. (1), as printed: I(1+G+S)B [forward pass] + I(G+S-1)B - OB [reverse pass] + IO(2+G+S) - I(O+1) [parameter
# count]. Eq. (2): I[2(G+S)B + (G+S+1)O - 1] - OB. Section 3.1: KAN layer IO(2+G+S), FC layer O(I+1).
# Every expected value below is worked out by hand in the comment beside it.


@pytest.mark.parametrize("I,O,B,G,S,terms,total,sec31", [
    # I=2 O=3 B=4 G=1 S=1. Forward: the KAN allocates IB + OB + I(G+S)B = 8 + 12 + 16 = 36, the FC layer OB = 12,
    # extra 24 (= I(1+G+S)B = 2*3*4). Reverse: I(G+S-1)B = 2*1*4 = 8, less OB = 12: -4 (negative, as printed).
    # Parameters: IO(2+G+S) = 6*4 = 24 less I(O+1) = 2*4 = 8: 16. Total 24 - 4 + 16 = 36.
    # Section 3.1: KAN 24, FC O(I+1) = 3*3 = 9, difference 15 (Eq. (1)'s 16 is larger by O - I = 1).
    (2, 3, 4, 1, 1, (24, -4, 16), 36, (24, 9, 15)),
    # I=4 O=3 B=10, the paper's G=5 S=3. Forward: IB 40 + OB 30 + I(G+S)B 320 = 390, less the FC's 30: 360.
    # Reverse: 4*7*10 = 280 less 30: 250. Parameters: 4*3*10 = 120 less 4*4 = 16: 104. Total 714.
    # Section 3.1: KAN 120, FC 3*5 = 15, difference 105.
    (4, 3, 10, 5, 3, (360, 250, 104), 714, (120, 15, 105)),
    # One layer of the shipped B-spline Mixer at batch 8: I=O=128, B=8*64=512 rows, G=5, S=3. Forward
    # 128*9*512 = 589,824. Reverse 128*7*512 - 128*512 = 458,752 - 65,536 = 393,216. Parameters
    # 128*128*10 - 128*129 = 163,840 - 16,512 = 147,328. Total 1,130,368. Square layer: I(O+1) = O(I+1).
    (128, 128, 512, 5, 3, (589_824, 393_216, 147_328), 1_130_368, (163_840, 16_512, 147_328)),
])
def test_eq1_terms_by_hand(I, O, B, G, S, terms, total, sec31):
    est = paper_estimate(I, O, B, G, S)
    assert (est["forward_pass"], est["reverse_pass"], est["parameter_count"]) == terms
    assert est["total"] == total and est["unit"] == "elements (floats)"
    assert (est["kan_params_sec31"], est["fc_params_sec31"], est["parameter_count_sec31"]) == sec31
    assert "total_bytes" not in est
    assert paper_estimate(I, O, B, G, S, element_size=4)["total_bytes"] == 4 * total
    assert paper_eq2(I, O, B, G, S) == total  # Eq. (2) on the same hand-worked cases


def test_eq2_is_what_eq1_simplifies_to():
    # The paper writes Eq. (2) as "=" Eq. (1) with no condition beyond the definitions of I, O, B, G, S: expanding,
    # I(1+G+S)B + I(G+S-1)B = 2I(G+S)B and IO(2+G+S) - I(O+1) = IO(G+S+1) - I, so the sum is
    # I[2(G+S)B + (G+S+1)O - 1] - OB for every I, O, B, G, S (it holds identically, not only at G=5, S=3).
    # Both sides are affine in each of the five counts separately, so agreeing on {1, 2}^5 proves the identity;
    # larger values on top, and a term-by-term transcription of Eq. (1) as a third opinion.
    import itertools
    import random
    rng = random.Random(0)
    cases = list(itertools.product((1, 2), repeat=5))
    cases += [tuple(rng.randint(1, 500) for _ in range(5)) for _ in range(200)]
    for I, O, B, G, S in cases:
        eq1 = I * (1 + G + S) * B + (I * (G + S - 1) * B - O * B) + (I * O * (2 + G + S) - I * (O + 1))
        est = paper_estimate(I, O, B, G, S)
        assert est["total"] == est["forward_pass"] + est["reverse_pass"] + est["parameter_count"] == eq1
        assert paper_eq2(I, O, B, G, S) == eq1


def test_section31_counts_match_the_layer_and_the_tenfold_claim():
    # Section 3.1: "control points, shortcut weights and B-spline weights" = IO(2+G+S); our BSplineKAN (base weight
    # O x I, spline weight O x I x (G+S), spline scaler O x I) has exactly that many. With G=5, S=3 the ratio to an
    # FC layer is 10 I / (I + 1): "approximately 10 times" (9.92 at I = 128).
    for I, O, G, S in ((6, 5, 4, 2), (128, 128, 5, 3)):
        layer = BSplineKAN(I, O, grid_size=G, spline_order=S)
        assert sum(p.numel() for p in layer.parameters()) == paper_estimate(I, O, 1, G, S)["kan_params_sec31"]
    est = paper_estimate(128, 128, 1, 5, 3)
    assert est["kan_params_sec31"] / est["fc_params_sec31"] == pytest.approx(1280 / 129)


@pytest.mark.parametrize("arg", ["I", "O", "B", "G", "S"])
@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "3", None])
def test_eq1_rejects_what_is_not_a_positive_integer(arg, bad):
    kwargs = {**dict(I=4, O=3, B=10, G=5, S=3), arg: bad}
    for fn in (paper_estimate, paper_eq2):
        msg = re.escape(f"{fn.__name__}: {arg} must be a positive integer, got {bad!r}")
        with pytest.raises(ValueError, match=f"^{msg}$"):
            fn(**kwargs)
    with pytest.raises(ValueError, match="element_size must be a positive integer"):
        paper_estimate(4, 3, 10, 5, 3, element_size=0)


def test_eq1_summed_over_a_models_bspline_layers():
    # Input (2, 7, 6): 7 rows per image, so B = 7 * 4 = 28 at batch 4 for both B-spline layers; RSWAF is not counted.
    # Layer 0, I=6 O=5 G=4 S=2: forward 6*7*28 = 1176, reverse 6*5*28 - 5*28 = 840 - 140 = 700, parameters
    #   6*5*8 - 6*6 = 204; Section 3.1: KAN 240, FC 5*7 = 35.
    # Layer 2, I=5 O=3 G=3 S=1: forward 5*5*28 = 700, reverse 5*3*28 - 3*28 = 420 - 84 = 336, parameters
    #   5*3*6 - 5*4 = 70; Section 3.1: KAN 90, FC 3*6 = 18.
    model = nn.Sequential(BSplineKAN(6, 5, grid_size=4, spline_order=2), RSWAFKAN(5, 5),
                          BSplineKAN(5, 3, grid_size=3, spline_order=1))
    est = paper_model_estimate(model, torch.randn(2, 7, 6), batch_size=4)
    assert (est["forward_pass"], est["reverse_pass"], est["parameter_count"]) == (1876, 1036, 274)
    assert est["total"] == 3186 and est["element_size"] == 4 and est["total_bytes"] == 4 * 3186
    assert (est["kan_params_sec31"], est["fc_params_sec31"], est["parameter_count_sec31"]) == (330, 53, 277)
    assert est["layers"] == [("0", 6, 5, 7, 4, 2), ("2", 5, 3, 7, 3, 1)]
    with pytest.raises(ValueError, match="^paper_model_estimate: batch_size must be a positive integer, got 0$"):
        paper_model_estimate(model, torch.randn(2, 7, 6), batch_size=0)


def test_cap_marks_oom_and_skips_larger_batches():
    torch.manual_seed(0)
    build = lambda: nn.Sequential(nn.Flatten(), BSplineKAN(12, 16), BSplineKAN(16, 3))  # noqa: E731
    small = measure_step(build(), torch.randn(4, 12), torch.randint(0, 3, (4,)))
    big = measure_step(build(), torch.randn(64, 12), torch.randint(0, 3, (64,)))
    assert "saved-tensor" in small["method"]
    rows = memory_sweep(build, [4, 64, 128], (12,), 3, cap_bytes=(small["bytes"] + big["bytes"]) / 2)
    assert rows[0]["bytes"] == small["bytes"]
    assert rows[1]["bytes"] is None and "cap" in rows[1]["oom"] and rows[1]["measured_bytes"] == big["bytes"]
    assert rows[2]["bytes"] is None and "skipped" in rows[2]["oom"]


# --- Storage modes (issue 14): impl "fast" (our kernels) vs "reference" (autograd, efficient-kan-style storage) ---

ROWS, IN, OUT, G, S = 16, 8, 4, 5, 3  # one small layer: 16 rows, 8 -> 4, grid 5, order 3: 8 bases per input
MLP, KAN = "kan_mixer_tiny_p4_32:none", "kan_mixer_tiny_p4_32:bspline"
KAN_EAGER = '{"compile": false}'  # the eager kernels: same storage, no compile time in a unit test


def test_reference_mode_stores_the_expanded_basis_and_fast_does_not():
    # The same layer (same weights) switched by set_kan_impl. Input without gradient, so autograd records only
    # the two weight-gradient products: reference keeps SiLU(x) (ROWS x IN, for the base weight's gradient) and the
    # expanded basis (ROWS x IN x (G + S), for the spline weight's); the scaled spline weight is not kept (the
    # basis needs no gradient). Fast keeps x alone and builds the (ROWS, 1 + G + S, IN) features in scratch.
    model = nn.Sequential(BSplineKAN(IN, OUT, grid_size=G, spline_order=S))
    basis = 4 * ROWS * IN * (G + S)
    # Fast first: its scratch must not show up in the reference measurement that follows.
    assert set_kan_impl(model, "fast") == 1 and model[0].impl == "fast"
    fast = _measure(model, IN, rows=ROWS)
    assert set_kan_impl(model, "reference") == 1 and model[0].impl == "reference"
    ref = _measure(model, IN, rows=ROWS)
    assert ref["activation_bytes"] == 4 * ROWS * IN + basis == 4608
    assert fast["activation_bytes"] == 4 * ROWS * IN == 512
    assert ref["activation_bytes"] - fast["activation_bytes"] >= basis > fast["activation_bytes"]
    # Scratch belongs to the fast rows only: the reference path allocates none, and none is left over.
    assert fast["scratch_bytes"] == 4 * ROWS * (1 + G + S) * IN and ref["scratch_bytes"] == 0
    assert scratch_bytes() == 0
    params = _param_bytes((OUT, IN), (OUT, IN, G + S), (OUT, IN))
    assert ref["bytes"] == 2 * params + ref["activation_bytes"]
    assert fast["bytes"] == 2 * params + fast["activation_bytes"] + fast["scratch_bytes"]


def test_reference_mode_inside_a_network_keeps_at_least_the_basis():
    # With a Linear in front the KAN input needs a gradient and the reference recursion's own intermediates are
    # kept too (not counted by hand): the gap must still be at least the expanded basis, and fast must stay
    # below one basis (it keeps the Linear's input and its output).
    model = nn.Sequential(nn.Linear(6, IN), BSplineKAN(IN, OUT, grid_size=G, spline_order=S))
    basis = 4 * ROWS * IN * (G + S)
    set_kan_impl(model, "reference")
    ref = _measure(model, 6, rows=ROWS)
    set_kan_impl(model, "fast")
    fast = _measure(model, 6, rows=ROWS)
    assert fast["activation_bytes"] == 4 * ROWS * (6 + IN) < basis
    assert ref["activation_bytes"] - fast["activation_bytes"] >= basis
    assert ref["scratch_bytes"] == 0 < fast["scratch_bytes"]


def test_set_kan_impl_refuses_what_would_be_wrong():
    with pytest.raises(ValueError, match="impl must be one of"):
        set_kan_impl(nn.Sequential(BSplineKAN(4, 2)), "dense")
    trainable = nn.Sequential(RSWAFKAN(4, 2, train_grid=True))  # impl "reference" by construction
    with pytest.raises(ValueError, match="fixed basis centres"):
        set_kan_impl(trainable, "fast")
    assert trainable[0].impl == "reference"
    assert set_kan_impl(nn.Sequential(nn.Linear(4, 2)), "fast") == 0


def test_sweep_records_the_mode_measured():
    build = lambda: nn.Sequential(nn.Flatten(), BSplineKAN(12, 3))  # noqa: E731
    fast = memory_sweep(build, [4], (12,), 3, impl="fast")
    ref = memory_sweep(build, [4], (12,), 3, impl="reference")
    mlp = memory_sweep(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), [4], (12,), 3, impl="reference")
    assert (fast[0]["impl"], ref[0]["impl"], mlp[0]["impl"]) == ("fast", "reference", "n/a")
    assert ref[0]["activation_bytes"] - fast[0]["activation_bytes"] >= 4 * 4 * 12 * 8
    assert ref[0]["scratch_bytes"] == 0 < fast[0]["scratch_bytes"]


def test_cli_measures_both_modes_and_the_ratio_to_the_mlp(tmp_path):
    import json

    from kanvision.analysis.cli import _models, _parser
    from kanvision.cli import main
    # A one-block, 16-wide KAN Mixer on the eager kernels (the zoo's storage, under a second), on the CPU: the
    # saved-tensor method, whatever the default device is.
    tiny = ["--model", "kan_mixer_tiny_p4_32", "--model-kwargs", '{"num_blocks": 1, "embed_dim": 16}',
            "--num-classes", "3"]
    rows = main(["analyze", "memory", *tiny, "--kan", "none", "--kan", "bspline", "--kan-kwargs", KAN_EAGER,
                 "--batch-sizes", "2", "4", "--impl", "fast", "reference", "--device", "cpu", "--out", str(tmp_path),
                 "--no-progress"])
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["mlp_reference"] == MLP
    key = lambda r: (r["model"], r["impl"], r["batch_size"])  # noqa: E731
    by = {key(r): r for r in saved["rows"]}
    # The MLP once (no storage mode), the KAN model once per mode.
    assert sorted(by) == sorted([(MLP, "n/a", 2), (MLP, "n/a", 4)]
                                + [(KAN, m, b) for m in ("fast", "reference") for b in (2, 4)])
    # Each KAN layer's expanded basis, rows from the forward: the reference rows keep at least all of them.
    ((_, model),) = _models(_parser().parse_args(["memory", *tiny, "--kan", "bspline", "--kan-kwargs", KAN_EAGER,
                                                  "--device", "cpu"]))
    layers = [m for m in model.modules() if isinstance(m, BSplineKAN)]
    rows_per_image = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: rows_per_image.__setitem__(
        mod, inp[0].numel() // mod.in_features)) for m in layers]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    basis_per_image = sum(4 * rows_per_image[m] * m.in_features * m.num_bases for m in layers)
    assert layers and all(m.impl == "fast" for m in layers)
    for bs in (2, 4):
        fast, ref = by[(KAN, "fast", bs)], by[(KAN, "reference", bs)]
        assert ref["activation_bytes"] - fast["activation_bytes"] >= bs * basis_per_image
        assert ref["scratch_bytes"] == 0 < fast["scratch_bytes"]
    # The ratio: JSON and table both bytes / the MLP's bytes at the same batch size.
    table = {}
    for line in (tmp_path / "memory.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 10 and cells[2].isdigit():
            table[(cells[0], cells[1], int(cells[2]))] = float(cells[4])
    assert sorted(table) == sorted(by)
    for k, r in by.items():
        expected = r["bytes"] / by[(MLP, "n/a", k[2])]["bytes"]
        assert r["ratio_to_mlp"] == pytest.approx(expected, rel=1e-12)
        assert table[k] == pytest.approx(expected, abs=0.005)
    assert by[(KAN, "reference", 4)]["ratio_to_mlp"] != by[(KAN, "fast", 4)]["ratio_to_mlp"]
    text = (tmp_path / "memory.md").read_text()
    assert "saved-tensor accounting" in text and "not an allocator peak" in text and "| impl |" in text
    assert (tmp_path / "memory.png").exists()
    only = main(["analyze", "memory", *tiny, "--kan", "bspline", "--kan-kwargs", KAN_EAGER, "--batch-sizes", "2",
                 "--impl", "reference", "--device", "cpu", "--out", str(tmp_path / "ref"), "--no-progress"])
    assert [(r["impl"], r["ratio_to_mlp"]) for r in only] == [("reference", None)]


@pytest.mark.parametrize("with_eq1", [False, True])
def test_plot_draws_both_modes(tmp_path, monkeypatch, with_eq1):
    # Same colour per model, solid fast / dotted reference (the MLP solid), log-log, a legend naming the modes;
    # an OOM point is a mark at the bottom, not a line point. With estimates: one dashed line per model given, in
    # that model's colour, bytes drawn in MiB like the measurements.
    import matplotlib.pyplot as plt

    from kanvision.analysis.plots import plot_memory
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    rows = [dict(model=m, impl=i, batch_size=b, bytes=None if (i, b) == ("reference", 8) else b * 2**20 * k)
            for m, i, k in ((MLP, "n/a", 1), (KAN, "fast", 2), (KAN, "reference", 5)) for b in (2, 4, 8)]
    eq1 = {KAN: [(2, 3 * 2**20), (4, 6 * 2**20), (8, 12 * 2**20)]} if with_eq1 else None
    plot_memory(rows, tmp_path / "m.png", estimates=eq1)
    ((fig,),) = [figs]
    ax = fig.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log") and (tmp_path / "m.png").exists()
    assert "MiB" in ax.get_ylabel() and "batch size" in ax.get_xlabel()
    lines = {ln.get_label(): ln for ln in ax.lines if not ln.get_label().startswith("_")}
    expected = [f"{MLP}, no KAN layers", f"{KAN}, fast (recomputes basis)", f"{KAN}, reference (stores basis)"]
    eq1_label = f"{KAN}, paper's Eq. (1): memory beyond FC layers"
    assert sorted(lines) == sorted(expected + ([eq1_label] if with_eq1 else []))
    fast, ref, mlp = (lines[f"{KAN}, fast (recomputes basis)"], lines[f"{KAN}, reference (stores basis)"],
                      lines[f"{MLP}, no KAN layers"])
    assert (fast.get_linestyle(), ref.get_linestyle(), mlp.get_linestyle()) == ("-", ":", "-")
    assert fast.get_color() == ref.get_color() != mlp.get_color()
    assert list(ref.get_xdata()) == [2, 4] and list(fast.get_xdata()) == [2, 4, 8]
    title = ax.get_legend().get_title().get_text()
    assert "dotted: reference" in title and ("dashed: analytic estimate" in title) is with_eq1
    if with_eq1:
        dashed = lines[eq1_label]
        assert dashed.get_linestyle() == "--" and dashed.get_color() == fast.get_color()
        assert list(dashed.get_xdata()) == [2, 4, 8] and list(dashed.get_ydata()) == [3.0, 6.0, 12.0]
    plt.close(fig)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_is_reset_before_each_measurement():
    # A large step first, then a small one: the small one's allocator peak must be its own, the same as when it
    # is measured first on a fresh peak, and far below the large one's.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), BSplineKAN(256, 10)).cuda()
    small = lambda: measure_step(model, torch.randn(8, 64, device="cuda"),  # noqa: E731
                                 torch.zeros(8, dtype=torch.long, device="cuda"))
    first = small()
    big = measure_step(model, torch.randn(4096, 64, device="cuda"), torch.zeros(4096, dtype=torch.long, device="cuda"))
    again = small()
    assert "allocator peak" in first["method"] and again["bytes"] == first["bytes"] < big["bytes"] / 10
