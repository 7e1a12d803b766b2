"""Progress and estimates of `kanvision analyze`: on stderr only, silenced by --no-progress, numbers unchanged."""
import io
import json
import time

import pytest

from kanvision.analysis.hessian import arpack_hvp_bounds
from kanvision.analysis.progress import Reporter, format_duration
from kanvision.cli import main

# Small enough that a Hessian run is a few seconds on a busy CPU: the point here is the reporting.
TINY = ["--model", "test_vit", "--model-kwargs",
        '{"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 1, "num_heads": 1}',
        "--num-classes", "3", "--kan", "none", "--device", "cpu"]
HESSIAN = ["--batch-size", "4", "--top-k", "2", "--steps", "4", "--probes", "2", "--trace-probes", "2",
           "--maxiter", "2"]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_hessian_progress_goes_to_stderr_and_changes_no_number(tmp_path, capsys):
    shown = main(["analyze", "hessian", *TINY, *HESSIAN, "--out", str(tmp_path / "a")])
    out, err = capsys.readouterr()
    for line in ("hessian test_vit:none: ARPACK largest + residuals: started (at most ",
                 "hessian test_vit:none: ARPACK smallest + residuals: done, ",
                 "hessian test_vit:none: SLQ: probes 1-2/2, step 4/4: ",
                 "hessian test_vit:none: SLQ: done, 8 HVPs in ",
                 "hessian test_vit:none: Hutchinson trace: done, 2 HVPs in "):
        assert line in err
    estimate = [l for l in err.splitlines() if "(first, with setup)" in l]
    assert len(estimate) == 1  # printed once per model
    low, high = arpack_hvp_bounds(shown["models"]["test_vit:none"]["num_params"], 2, 2)
    # 8 SLQ + 2 Hutchinson + 2 x 2 residual HVPs, then ARPACK's two ends
    assert f"14 HVPs for SLQ, Hutchinson and residuals and {2 * low}-{2 * high} for ARPACK -> between " in estimate[0]
    assert "HVP" not in out and "params=" in out and "wrote " in out  # stdout: results only

    quiet = main(["analyze", "hessian", *TINY, *HESSIAN, "--no-progress", "--out", str(tmp_path / "b")])
    out_quiet, err_quiet = capsys.readouterr()
    assert err_quiet == "" and out_quiet.replace(str(tmp_path / "b"), "") == out.replace(str(tmp_path / "a"), "")
    a, b = (json.loads((tmp_path / d / "hessian.json").read_text()) for d in "ab")
    for r in (a, b):
        r["models"]["test_vit:none"].pop("seconds")
        r["settings"].pop("out")
    assert a == b and "no_progress" not in a["settings"]
    assert shown["models"]["test_vit:none"]["trace"] == quiet["models"]["test_vit:none"]["trace"]
    # The ARPACK bounds in the estimate hold on this real model: what ran lies between them.
    arpack_calls = a["models"]["test_vit:none"]["hvp_calls"] - 14
    assert 2 * low <= arpack_calls <= 2 * high


def test_memory_and_throughput_report_phases(tmp_path, capsys):
    main(["analyze", "memory", *TINY, "--batch-sizes", "2", "6", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert "memory test_vit:none: started (8 images)" in err
    assert "memory test_vit:none: batch 2 done: 2/8 images, " in err and " left" in err
    assert "memory test_vit:none: done, 8 images in " in err
    assert "| test_vit:none | n/a | 2 |" in out and "images" not in out.split("\n\n", 1)[1]

    main(["analyze", "throughput", *TINY, "--batch-size", "2", "--warmup", "1", "--repeats", "2",
          "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert "throughput test_vit:none: started (6 calls)" in err
    assert "throughput test_vit:none: train timed 3/3: 3/6 calls, " in err
    assert "throughput test_vit:none: done, 6 calls in " in err
    assert "| test_vit:none |" in out and "calls" not in out

    main(["analyze", "throughput", *TINY, "--batch-size", "2", "--warmup", "0", "--repeats", "1", "--no-progress",
          "--out", str(tmp_path)])
    assert capsys.readouterr().err == ""


def test_estimate_of_a_loop_with_known_step_time():
    clock, stream = FakeClock(), io.StringIO()
    rep = Reporter(stream=stream, interactive=False, clock=clock)
    with rep, rep.phase("fake", total=100, unit="step") as p:
        for i in range(100):
            clock.now += 2.0
            p.advance()
            if i == 24:
                elapsed, remaining = p.estimate()
                assert (elapsed, remaining) == (50.0, 150.0)
    lines = stream.getvalue().splitlines()
    # start, every 10% (at 2 s a step, 10% comes before the 30 s rule would), end
    assert lines[0] == "fake: started (100 steps)" and lines[-1] == "fake: done, 100 steps in 3.3 min (2 s per step)"
    assert "fake: 10/100 steps, 20 s elapsed, about 3.0 min left" in lines
    assert "fake: 90/100 steps, 3.0 min elapsed, about 20 s left" in lines
    assert lines[1:-1] == [f"fake: {n}/100 steps, {format_duration(2 * n)} elapsed, about "
                           f"{format_duration(2 * (100 - n))} left" for n in range(10, 100, 10)]


def test_plain_lines_are_rate_limited_without_a_total():
    clock, stream = FakeClock(), io.StringIO()
    rep = Reporter(stream=stream, interactive=False, clock=clock)
    with rep.phase("open-ended", unit="HVP") as p:
        for _ in range(100):
            clock.now += 1.0
            p.advance()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "open-ended: started (HVPs: count not known in advance)"
    assert lines[1:-1] == [f"open-ended: {n} HVPs, {format_duration(n)} elapsed" for n in (30, 60, 90)]


def test_estimate_tracks_a_real_loop():
    rep = Reporter(stream=io.StringIO(), interactive=False)
    with rep.phase("sleep", total=8) as p:
        for i in range(8):
            time.sleep(0.03)
            p.advance()
            if i == 3:
                at, predicted = p.estimate()
        actual = p.elapsed() - at
    assert predicted == pytest.approx(actual, rel=0.67)


def test_terminal_mode_draws_rich_bars_and_disabled_mode_prints_nothing():
    stream = io.StringIO()
    with Reporter(stream=stream, interactive=True) as rep:
        assert rep._progress is not None
        with rep.phase("hessian m: SLQ", total=4, unit="HVP") as p:
            rep.note("an estimate line")
            for i in range(4):
                p.advance(detail=f"probe {i + 1}/4")
    text = stream.getvalue()
    assert "an estimate line" in text and "hessian m: SLQ" in text and "4/4" in text and "HVPs" in text

    assert Reporter(stream=io.StringIO()).interactive is False  # not a terminal: plain lines
    quiet = io.StringIO()
    with Reporter(enabled=False, stream=quiet, interactive=True) as rep, rep.phase("x", total=2) as p:
        rep.note("hidden")
        p.advance(2)
    assert quiet.getvalue() == ""


def test_slq_position_names_the_lockstep_block_and_its_step():
    from kanvision.analysis.hessian_cli import _slq_position
    # 10 probes in one lockstep block, 20 steps: 10 HVPs per step
    assert _slq_position(1, 10, 20, None) == "probes 1-10/10, step 1/20"
    assert _slq_position(11, 10, 20, None) == "probes 1-10/10, step 2/20"
    assert _slq_position(200, 10, 20, None) == "probes 1-10/10, step 20/20"
    # one probe after another (block 1), and a short last block (3 probes in blocks of 2)
    assert [_slq_position(d, 3, 4, 1) for d in (1, 5, 12)] == ["probe 1/3, step 1/4", "probe 2/3, step 1/4",
                                                               "probe 3/3, step 4/4"]
    assert [_slq_position(d, 3, 4, 2) for d in (8, 9, 12)] == ["probes 1-2/3, step 4/4", "probe 3/3, step 1/4",
                                                               "probe 3/3, step 4/4"]
