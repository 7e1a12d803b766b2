"""`kanvision gpu-check`: one table saying whether the KAN layers and training work on this machine's GPU.

Offline, on any CUDA machine: (1) parity of both KAN kinds' fast layers (float32, bf16 autocast,
torch.compile, after update_grid) against the float64 reference path on the device, outputs and all
gradients; (2) a short bf16-mixed fit of each kind through the real `kanvision fit` CLI; (3) a 2-process DDP
fit with grid updates, ranks compared tensor by tensor (2+ GPUs); (4) the layer benchmark against its
matrix-multiply floor. Without a CUDA device it says so and runs the CPU subset: (1) on small shapes and
(2) with a one-block model and a few steps. Exit status 1 if any row fails.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from kanvision.device import DeviceError, default_device, resolve_device

# Errors are max |fast - reference| / max |reference| per tensor. float32 kernels differ from the float64
# reference by rounding only (~1e-6 measured on the CPU); bf16 autocast rounds the matmul inputs to 8
# mantissa bits (eps 7.8e-3), which leaves ~4e-3 on the CPU.
TOL_FP32, TOL_BF16 = 1e-5, 2e-2
SETTINGS = {  # name -> (layer keywords, autocast to bf16, refit the grid first); update_grid: B-spline only
    "fp32 eager": ({"compile": False}, False, False),
    "bf16 autocast eager": ({"compile": False}, True, False),
    "fp32 compile=True": ({"compile": True}, False, False),
    "bf16 autocast, compile=True": ({"compile": True}, True, False),
    "fp32 eager after update_grid": ({"compile": False}, False, True),
    "fp32 compile=True after update_grid": ({"compile": True}, False, True),
}
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    check: str
    setting: str
    measured: str
    target: str
    result: str  # PASS | FAIL | SKIP


def verdict(value: float, limit: float) -> str:
    """PASS when value <= limit; NaN or inf (a broken kernel) always fails."""
    return "PASS" if math.isfinite(value) and value <= limit else "FAIL"


def relative_errors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor: max |got - want| / max |want| (the error relative to that tensor's scale)."""
    if got.keys() != want.keys():
        raise ValueError(f"different tensors: {sorted(got)} vs {sorted(want)}")
    return {k: float((got[k].double() - want[k]).abs().max() / want[k].abs().max().clamp_min(1e-30))
            for k in want}


def _forward_backward(layer, x, cotangent, autocast: bool) -> dict[str, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.backward(cotangent.to(y.dtype))
    out = {"output": y.detach(), "grad input": x.grad}
    # Trainable parameters only: a frozen one (FastKAN's rbf.grid) has no gradient to compare.
    out.update({f"grad {name}": p.grad for name, p in layer.named_parameters() if p.requires_grad})
    return out


def _non_uniform(grid: torch.Tensor) -> bool:
    steps = grid.diff(dim=-1)
    return bool((steps - steps[..., :1]).abs().max() > 1e-4 * steps.abs().max())


def _compile_failures() -> set[str]:
    try:
        from kanvision.kinds.compile import compile_failures
    except ImportError:
        return set()
    failures = compile_failures()
    return {f"{k}: {v}" for k, v in failures.items()} if isinstance(failures, dict) else set(map(str, failures))


@contextlib.contextmanager
def _compile_watch(device: torch.device):
    """Yields a list that receives why compile=True ran eager kernels inside the block, if it did."""
    fell_back: list[str] = []
    try:
        from kanvision.kinds.compile import compile_supported
        supported, why = compile_supported(device.type)
        if not supported:
            fell_back.append(f"not compiled: {why}")
    except ImportError:
        pass
    before = _compile_failures()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield fell_back
    # Only our own fallback warnings: torch 2.11 on CUDA also warns "torch.jit.script_method is deprecated.
    # Please switch to torch.compile ...", which mentions compile but says nothing about our kernels.
    fell_back += [str(w.message) for w in caught
                  if str(w.message).startswith("kanvision:") and "compile" in str(w.message)]
    fell_back += sorted(_compile_failures() - before)


def parity_label(setting: str, device: torch.device, n: int, fan_in: int, fan_out: int) -> str:
    return f"{setting}; N={n}, {fan_in}->{fan_out}, {device}"


def parity(kind: str, setting: str, device: torch.device, n: int, fan_in: int, fan_out: int,
           fast_state: dict | None = None) -> Row:
    """The fast layer (float32 weights) against the float64 reference with the same weights, on `device`.

    fast_state replaces the fast layer's weights after loading (a test's deliberate mismatch)."""
    from kanvision.kinds import get_kind

    record = get_kind(kind)
    cls = record.layer
    kwargs, autocast, refit = SETTINGS[setting]
    tol = max(TOL_BF16, record.bf16_tolerance) if autocast else TOL_FP32
    label = parity_label(setting, device, n, fan_in, fan_out)
    torch.manual_seed(0)
    ref = cls(fan_in, fan_out, impl="reference").double().to(device)
    fast = cls(fan_in, fan_out, **kwargs).to(device)
    fast.load_state_dict(ref.state_dict())
    if fast_state is not None:
        fast.load_state_dict(fast_state)
    g = torch.Generator().manual_seed(1)
    # The kind's sample range (B-spline: ~1/6 of the inputs outside the grid [-1, 1], where only the base branch
    # acts), else standard normal.
    if record.sample_range is not None:
        lo, hi = record.sample_range
        x = torch.rand(n, fan_in, generator=g, dtype=torch.float64) * (hi - lo) + lo
    else:
        x = torch.randn(n, fan_in, generator=g, dtype=torch.float64)
    x = x.to(device)
    cotangent = torch.randn(n, fan_out, generator=g, dtype=torch.float64).to(device)
    if refit:
        fit_x = (torch.randn(n, fan_in, generator=g, dtype=torch.float64) * 0.7 + 0.2).to(device)
        ref.update_grid(fit_x)
        fast.update_grid(fit_x.float())
        if not _non_uniform(fast.grid):
            return Row("parity " + kind, label, "grid still uniform after update_grid", "non-uniform knots", "FAIL")
    # The reference runs in float64; the float32 comparison must not use TF32 matmuls (CUDA's "high").
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        want = _forward_backward(ref, x, cotangent, autocast=False)
        with _compile_watch(device) as fell_back:
            got = _forward_backward(fast, x.float(), cotangent.float(), autocast)
    finally:
        torch.set_float32_matmul_precision(precision)
    target = f"<= {tol:.0e} x max abs(ref)"
    if kwargs.get("compile") and fell_back:
        return Row("parity " + kind, label, f"compile fell back to eager: {fell_back[0][:100]}", target, "FAIL")
    errors = relative_errors(got, {k: v.double() for k, v in want.items()})
    worst = max(errors, key=lambda k: errors[k] if math.isfinite(errors[k]) else math.inf)
    return Row("parity " + kind, label, f"{errors[worst]:.1e} ({worst})", target, verdict(errors[worst], tol))


def _trainer_device(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    return {"accelerator": "cpu", "devices": 1}


def fit_label(kind: str, device: torch.device, steps: int, blocks: int | None, batch: int) -> str:
    kernels = "compiled" if device.type == "cuda" else "eager"
    return (f"kan_mixer_tiny_p4_32 {kind}, num_blocks={blocks or 'default'}, batch {batch}, {steps} bf16-mixed "
            f"steps, {kernels} KAN kernels, {device}")


def fit(kind: str, device: torch.device, steps: int, blocks: int | None, batch: int, workdir: Path) -> Row:
    """`kanvision fit` (the real LightningCLI) for `steps` bf16-mixed steps on synthetic images."""
    from kanvision.train.cli import lightning_main

    model = {"model": "kan_mixer_tiny_p4_32", "kan": kind}
    if blocks:
        model["model_kwargs"] = {"num_blocks": blocks}
    # Compiled kernels on the GPU, as the recipes in configs/ train; eager on the CPU, where compiling the
    # bf16 variants would take longer than the steps (the parity rows check the compiled kernels there).
    model["kan_kwargs"] = {"compile": device.type == "cuda"}
    config = {"model": model,
              "data": {"num_workers": 0, "batch_size": batch, "synthetic_size": steps * batch, "augment": "none"},
              "trainer": {**_trainer_device(device), "max_epochs": 1, "logger": False, "num_sanity_val_steps": 0,
                          "enable_progress_bar": False, "enable_model_summary": False,
                          "default_root_dir": str(workdir / f"fit_{kind}")}}
    path = workdir / f"fit_{kind}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    setting = fit_label(kind, device, steps, blocks, batch)
    args = ["fit", "--config", str(path), "--data.dataset", "synthetic", "--trainer.precision", "bf16-mixed",
            "--trainer.max_steps", str(steps), "--test_after_fit", "false"]  # the training metrics are checked
    t0 = time.perf_counter()
    argv = sys.argv
    sys.argv = sys.argv[:1]  # LightningCLI warns when it is given args while sys.argv has others (ours)
    try:
        cli = lightning_main(args)
    finally:
        sys.argv = argv
    m = cli.trainer.callback_metrics
    loss = float(m.get("train/loss_step", float("nan")))
    done = cli.trainer.global_step
    measured = (f"loss {loss:.3f} after {done} steps, {float(m.get('train/images_per_s', float('nan'))):.0f} "
                f"img/s, {time.perf_counter() - t0:.1f} s")
    ok = math.isfinite(loss) and done == steps
    return Row("fit " + kind, setting, measured, f"{steps} steps, finite loss", "PASS" if ok else "FAIL")


class StateDump(L.Callback):
    """Every rank writes its model's tensors at the end of training, for the DDP comparison."""

    def __init__(self, out_dir: str):
        self.out = Path(out_dir)

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()}
        torch.save(state, self.out / f"state_rank{trainer.global_rank}.pt")


def ddp(workdir: Path, steps: int, accelerator: str = "gpu") -> Row:
    """2-GPU DDP fit with grid updates in a child process (DDP relaunches the command line, not this tool)."""
    from kanvision.kinds import get_kind, kind_names

    kind = next(k for k in kind_names() if get_kind(k).grid_update)  # the check is about grid updates under DDP
    config = {"model": {"model": "kan_mixer_tiny_p4_32", "kan": kind, "model_kwargs": {"num_blocks": 2},
                        "grid_update_every": 2, "grid_update_until": steps},
              "data": {"dataset": "synthetic", "batch_size": 64, "num_workers": 0, "synthetic_size": 64 * steps,
                       "augment": "none"},
              "trainer": {"accelerator": accelerator, "devices": 2, "strategy": "ddp", "precision": "bf16-mixed",
                          "max_steps": steps, "max_epochs": 1, "logger": False, "num_sanity_val_steps": 0,
                          "enable_progress_bar": False, "enable_model_summary": False,
                          "default_root_dir": str(workdir / "ddp"),
                          "callbacks": [{"class_path": "kanvision.analysis.gpu_check.StateDump",
                                         "init_args": {"out_dir": str(workdir)}}]}}
    path = workdir / "ddp.yaml"
    path.write_text(json.dumps(config))
    setting = f"2 {accelerator.upper()} processes, {kind} Mixer 2 blocks, grid update every 2 of {steps} steps, bf16-mixed"
    target = "ranks bit-identical, grids refit"
    proc = subprocess.run([sys.executable, "-m", "kanvision.cli", "fit", "--config", str(path)],
                          capture_output=True, text=True, timeout=900, cwd=workdir)
    if proc.returncode != 0 or "terminate called" in proc.stderr:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
        return Row("ddp", setting, f"exit {proc.returncode}: {tail}", target, "FAIL")
    s0, s1 = (torch.load(workdir / f"state_rank{r}.pt", weights_only=True) for r in (0, 1))
    differ = [k for k in s0 if k not in s1 or not torch.equal(s0[k], s1[k])]
    grids = [v for k, v in s0.items() if k.endswith(".grid")]
    moved = sum(_non_uniform(g) for g in grids)  # the initial knots are uniform
    measured = f"{len(s0)} tensors, {len(differ)} differ; {moved}/{len(grids)} grids refit"
    ok = not differ and bool(grids) and moved == len(grids)
    return Row("ddp", setting, measured, target, "PASS" if ok else "FAIL")


def benchmark(device: torch.device, quick: bool, max_ratio: float) -> list[Row]:
    """benchmarks/layers.py rows at N=8192, 192->192: fwd+bwd ms and the ratio to the nn.Linear floor."""
    source = REPO / "benchmarks" / "layers.py"
    if not source.is_file():
        return [Row("benchmark", "N=8192, 192->192", f"{source} not found (needs a source checkout)", "-", "SKIP")]
    spec = importlib.util.spec_from_file_location("kanvision_bench_layers", source)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    n, i, o = 8192, 192, 192
    runs, warmup = (5, 2) if quick else (20, 5)
    builders = {label: (width, build) for label, width, build in bench.rows_for(i)}
    rows, floors = [], {}
    for kind in ("B-spline", "RSWAF"):
        floor_label = next(k for k in builders if k.startswith(f"floor {kind}"))
        width, build = builders[floor_label]
        floors[kind] = bench.bench_row(build, n, width, o, runs, warmup, device)["step"]
        for label in (f"{kind} fast eager", f"{kind} fast compiled"):
            width, build = builders[label]
            with _compile_watch(device) as fell_back:
                ms = bench.bench_row(build, n, width, o, runs, warmup, device)["step"]
            ratio = ms / floors[kind]
            measured = f"{ms:.2f} ms fwd+bwd, {ratio:.2f}x floor ({floors[kind]:.2f} ms)"
            result = verdict(ratio, max_ratio)
            if "compiled" in label and fell_back:
                measured, result = f"compile fell back to eager: {fell_back[0][:80]}", "FAIL"
            card = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
            rows.append(Row("benchmark", f"{label}, N={n}, {i}->{o}, median of {runs}, {card}", measured,
                            f"<= {max_ratio:g}x floor (budget, not calibrated on a GPU yet)", result))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| check | setting | measured | target | result |", "|---|---|---|---|---|"]
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731  error messages may hold pipes
    lines += ["| " + " | ".join(cell(v) for v in (r.check, r.setting, r.measured, r.target, r.result)) + " |"
              for r in rows]
    return "\n".join(lines)


def _guarded(rows: list[Row], check: str, setting: str, fn, *args) -> None:
    """Run one check; an exception is that check's FAIL row (the other checks still run)."""
    print(f"gpu-check: {check} ({setting}) ...", file=sys.stderr, flush=True)
    try:
        out = fn(*args)
    except Exception as e:  # noqa: BLE001 - the table must report every check, whatever broke
        first = str(e).strip().splitlines()[0][:140] if str(e).strip() else ""
        out = Row(check, setting, f"error: {type(e).__name__}: {first}", "runs", "FAIL")
    rows.extend(out if isinstance(out, list) else [out])


def run_checks(device: torch.device, quick: bool, max_ratio: float, workdir: Path,
               benchmark_rows: bool = True) -> list[Row]:
    cuda = device.type == "cuda"
    shape = ((1024, 64, 48) if quick else (4096, 128, 96)) if cuda else (256, 16, 12)
    rows: list[Row] = []
    from kanvision.kinds import get_kind, kind_names

    kinds = list(kind_names())
    for kind in [k for k in kinds if {"fast", "reference"} <= set(get_kind(k).impls)]:  # fast path vs reference
        for setting in SETTINGS:
            if get_kind(kind).grid_update or "update_grid" not in setting:
                _guarded(rows, "parity " + kind, parity_label(setting, device, *shape), parity, kind, setting,
                         device, *shape)
    fit_steps = (10 if quick else 30) if cuda else (3 if quick else 5)
    blocks, batch = (2 if quick else None, 64) if cuda else (1, 16)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # keep the device/precision banners out of the report
    try:
        for kind in kinds:
            _guarded(rows, "fit " + kind, fit_label(kind, device, fit_steps, blocks, batch), fit, kind, device,
                     fit_steps, blocks, batch, workdir)
    finally:
        lightning_log.setLevel(level)
    gpus = torch.cuda.device_count() if cuda else 0
    if gpus >= 2:
        _guarded(rows, "ddp", "2 GPUs", ddp, workdir, 4 if quick else 8)
    else:
        rows.append(Row("ddp", "2-process DDP fit with grid updates", f"skipped: {gpus} CUDA device(s)",
                        "needs 2+ GPUs", "SKIP"))
    if not benchmark_rows:
        rows.append(Row("benchmark", "layer fwd+bwd vs nn.Linear floor", "skipped: --no-benchmark", "-", "SKIP"))
    elif cuda:
        _guarded(rows, "benchmark", "N=8192, 192->192", benchmark, device, quick, max_ratio)
    else:
        rows.append(Row("benchmark", "layer fwd+bwd vs nn.Linear floor", "skipped: no CUDA device",
                        "needs a GPU", "SKIP"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kanvision gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default=default_device(), help="cuda, cuda:N or cpu (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer steps, smaller shapes and fewer timing runs")
    p.add_argument("--out", help="also write the table (markdown, with the machine) to this file")
    p.add_argument("--max-floor-ratio", type=float, default=3.0,
                   help="benchmark rows fail above this fwd+bwd time / floor (default: %(default)s)")
    # Timings are only meaningful on an otherwise idle GPU: a session that trains beside the check skips them
    # and runs benchmarks/layers.py once the GPU is free.
    p.add_argument("--no-benchmark", action="store_true", help="skip the timed benchmark rows")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        device = resolve_device(args.device)
    except DeviceError as e:
        raise SystemExit(f"kanvision gpu-check: {e}") from None
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} ({device}), {torch.cuda.device_count()} CUDA device(s)"
    else:
        where = "cpu"
        if not torch.cuda.is_available():
            built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            print(f"kanvision gpu-check: no CUDA device found (torch {torch.__version__}, {built}); running the "
                  "CPU subset: layer parity on small shapes and a short bf16-mixed fit of each kind", flush=True)
    with tempfile.TemporaryDirectory(prefix="kanvision_gpu_check_") as tmp:
        rows = run_checks(device, args.quick, args.max_floor_ratio, Path(tmp), not args.no_benchmark)
    failed = [r for r in rows if r.result == "FAIL"]
    header = [f"kanvision gpu-check, {datetime.datetime.now().isoformat(timespec='seconds')}: {where}; torch "
              f"{torch.__version__}{' (--quick)' if args.quick else ''}", ""]
    footer = ["", f"{len(rows) - len(failed)} of {len(rows)} rows passed or skipped; "
                  f"{len(failed)} failed" + (": " + ", ".join(f"{r.check} [{r.setting}]" for r in failed)
                                             if failed else "")]
    text = "\n".join(header + [table(rows)] + footer)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
