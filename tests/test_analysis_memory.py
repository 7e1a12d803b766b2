"""Memory analysis: CPU saved-tensor measurement against byte counts worked out by hand, cap-as-OOM, and the
paper's Eq. (1)/(2) (not available: see kanvision.analysis.memory.paper_estimate).

The loss in the measurement tests is `out.sum()`, whose backward saves nothing, so every saved byte comes from
the model. Float32 throughout: 4 bytes per element. N = rows.
"""
import pytest
import torch
from torch import nn

from kanvision.analysis.memory import analytic_estimate, kan_layer_estimate, measure_step, memory_sweep, paper_estimate
from kanvision.layers import BSplineKAN, RSWAFKAN

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
def test_fast_bspline_saves_only_its_input(compile):
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


def test_paper_estimate_is_not_guessed():
    # Eq. (1)/(2) of Pal & Das were not available to copy; the function must say so rather than return a guess.
    with pytest.raises(NotImplementedError, match="Eq"):
        paper_estimate(4, 3, 10, 5, 3)


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
