"""Memory analysis: analytic formulas, CPU saved-tensor measurement, cap-as-OOM."""
import torch
from torch import nn

from kanvision.analysis.memory import analytic_estimate, kan_layer_estimate, measure_step, memory_sweep
from kanvision.layers import BSplineKAN, RSWAFKAN


def test_layer_formula():
    # I=4, B=10, G=5, S=3: forward 4*9*10, backward 4*7*10
    assert kan_layer_estimate(4, 10, 5, 3) == {"forward": 360, "backward": 280}


def test_analytic_estimate_counts_rows_and_layers():
    model = nn.Sequential(BSplineKAN(6, 5), RSWAFKAN(5, 3))
    x = torch.randn(2, 7, 6)  # 7 tokens per image: rows = 7 * batch
    est = analytic_estimate(model, x, batch_size=4)
    rows = 7 * 4
    assert est["kan_layers"] == 2
    assert est["forward_bytes"] == 4 * (6 * 9 * rows + 5 * 9 * rows)
    assert est["backward_bytes"] == 4 * (6 * 7 * rows + 5 * 7 * rows)


def test_cpu_measurement_grows_with_batch_and_cap_marks_oom():
    torch.manual_seed(0)
    build = lambda: nn.Sequential(nn.Flatten(), BSplineKAN(12, 16), BSplineKAN(16, 3))  # noqa: E731
    small = measure_step(build(), torch.randn(4, 12), torch.randint(0, 3, (4,)))
    big = measure_step(build(), torch.randn(64, 12), torch.randint(0, 3, (64,)))
    assert "saved-tensor" in small["method"]
    # B-spline bases for 16x more rows: activation bytes grow ~16x
    assert 8 < big["activation_bytes"] / small["activation_bytes"] < 20
    rows = memory_sweep(build, [4, 64, 128], (12,), 3, cap_bytes=(small["bytes"] + big["bytes"]) / 2)
    assert rows[0]["bytes"] == small["bytes"]
    assert rows[1]["bytes"] is None and "cap" in rows[1]["oom"]
    assert rows[2]["bytes"] is None and "skipped" in rows[2]["oom"]
