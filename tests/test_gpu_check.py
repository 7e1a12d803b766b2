"""`kanvision gpu-check`: the CPU subset end to end, and that its comparisons fail when they should."""
import math

import pytest
import torch

from kanvision.analysis import gpu_check
from kanvision.cli import main
from kanvision.layers import RSWAFKAN


def rows_of(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


@pytest.mark.slow
def test_cpu_subset_prints_one_table_and_passes(tmp_path, capsys, compiled_kernels):
    out = tmp_path / "check.md"
    assert main(["gpu-check", "--device", "cpu", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert "no CUDA device found" in printed
    rows = rows_of(out.read_text())
    assert rows == rows_of(printed)  # the file holds the printed table
    by_check = {}
    for check, setting, measured, target, result in rows:
        by_check.setdefault(check, []).append((setting, measured, result))
    assert len(by_check["parity bspline"]) == 6 and len(by_check["parity rswaf"]) == 4
    for check in ("parity bspline", "parity rswaf", "fit bspline", "fit rswaf"):
        assert all(result == "PASS" for _, _, result in by_check[check]), by_check[check]
    for _, measured, _ in by_check["parity bspline"] + by_check["parity rswaf"]:
        assert float(measured.split()[0]) < gpu_check.TOL_BF16  # a number was measured, not a placeholder
    assert all("bf16-mixed" in setting and "loss" in measured for setting, measured, _ in by_check["fit rswaf"])
    assert [r for _, _, r in by_check["ddp"] + by_check["benchmark"]] == ["SKIP", "SKIP"]


def test_verdict_fails_above_the_tolerance_and_on_nan():
    assert gpu_check.verdict(5e-6, 1e-5) == "PASS"
    assert gpu_check.verdict(2e-5, 1e-5) == "FAIL"
    assert gpu_check.verdict(math.nan, 1.0) == "FAIL" and gpu_check.verdict(math.inf, 1.0) == "FAIL"


def test_parity_fails_for_a_layer_off_by_1e_4(monkeypatch):
    torch.manual_seed(0)  # parity() builds its reference from seed 0: the same weights as this one
    ref = RSWAFKAN(8, 4, impl="reference").double()
    g = torch.Generator().manual_seed(3)
    params = dict(ref.named_parameters())
    off = {k: v + 1e-4 * v.abs().max() * torch.randn(v.shape, generator=g, dtype=v.dtype) if k in params else v
           for k, v in ref.state_dict().items()}
    cpu = torch.device("cpu")
    assert gpu_check.parity("rswaf", "fp32 eager", cpu, 64, 8, 4).result == "PASS"
    assert gpu_check.parity("rswaf", "fp32 eager", cpu, 64, 8, 4, fast_state=off).result == "FAIL"
    # And a tolerance set below float32 rounding fails the untouched layer: the check compares numbers.
    monkeypatch.setattr(gpu_check, "TOL_FP32", 1e-12)
    assert gpu_check.parity("rswaf", "fp32 eager", cpu, 64, 8, 4).result == "FAIL"


def test_a_failed_row_makes_the_exit_status_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "run_checks", lambda *a: [
        gpu_check.Row("parity rswaf", "fp32 eager", "1.0e-03 (output)", "<= 1e-05", "FAIL"),
        gpu_check.Row("ddp", "2 GPUs", "skipped", "needs 2+ GPUs", "SKIP")])
    assert main(["gpu-check", "--device", "cpu"]) == 1
    assert "1 failed: parity rswaf [fp32 eager]" in capsys.readouterr().out


def test_unusable_device_is_one_line():
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(SystemExit, match=rf"kanvision gpu-check: device '{missing}' asked for, but"):
        main(["gpu-check", "--device", missing])


def test_compile_watch_counts_only_our_fallback_warnings():
    """torch 2.11 warns 'torch.jit.script_method is deprecated. Please switch to torch.compile' on CUDA: that
    made the fp32 compile row FAIL on an H100 although nothing fell back. Our own fallback warning still counts."""
    import warnings
    with gpu_check._compile_watch(torch.device("cpu")) as fell_back:
        warnings.warn("`torch.jit.script_method` is deprecated. Please switch to `torch.compile` or `torch.export`.")
    assert not [m for m in fell_back if "script_method" in m]
    with gpu_check._compile_watch(torch.device("cpu")) as fell_back:
        warnings.warn("kanvision: torch.compile of KAN kernel f x failed (boom); this variant runs eager")
    assert any("boom" in m for m in fell_back)
