"""Grid-update and model-build cost: wall time and peak host memory, each case in a fresh process.

    .venv/bin/python benchmarks/grid_update.py [--threads 2] [--cases layer,build,model] [--rows 4096]
                                               [--repeat 1] [--note TEXT] [--out benchmarks/RESULTS.md]

Cases:
- layer: one BSplineKAN(768 -> 192) `update_grid` on --rows rows (inputs N(0, 0.7^2), float32).
- build: `timm.create_model("kan_deit_base_patch16_224", kan="bspline", kan_hidden=192)`.
- model: `kanvision.train.grid_update.update_grids` on that model with 8 random 224x224 images (8 x 197 tokens =
  1576 rows per layer, 24 B-spline layers), single process, after one warm-up forward (its time includes
  the forward pass that captures the layer inputs).

Each case runs in its own subprocess so that its peak resident memory (getrusage ru_maxrss) is its own:
"peak MB" is that peak, "setup MB" the peak before the measured call (imports, model, inputs), so the
difference is what the call itself added. `--out` appends a section to the file ('' prints only).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import os
import resource
import statistics
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

CASES = ("layer", "build", "model")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _build():
    import timm

    import kanvision.models  # noqa: F401  (registers the zoo)
    return timm.create_model("kan_deit_base_patch16_224", kan="bspline", kan_hidden=192)


def child(case: str, threads: int, rows: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    forward = None
    if case == "layer":
        from kanvision.layers import BSplineKAN
        layer = BSplineKAN(768, 192)
        x = torch.randn(rows, 768) * 0.7
        setup = _maxrss_mb()
        t0 = time.perf_counter()
        layer.update_grid(x)
    elif case == "build":
        import timm  # noqa: F401  (imports are not what is measured)

        import kanvision.models  # noqa: F401
        setup = _maxrss_mb()
        t0 = time.perf_counter()
        _build()
    elif case == "model":
        from kanvision.train.grid_update import update_grids
        model = _build()
        images = torch.randn(8, 3, 224, 224)
        with torch.no_grad():  # warm-up: in training the grid update follows many forward passes
            model.eval()(images)
            t0 = time.perf_counter()
            model(images)
            forward = time.perf_counter() - t0  # the part of update_grids that captures the layer inputs
        model.train()
        setup = _maxrss_mb()
        t0 = time.perf_counter()
        update_grids(model, images)
    else:
        raise ValueError(f"unknown case {case!r}; use one of {CASES}")
    seconds = time.perf_counter() - t0
    return dict(case=case, seconds=seconds, peak_mb=_maxrss_mb(), setup_mb=setup, forward=forward)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--rows", type=int, default=4096, help="rows of the layer case")
    ap.add_argument("--repeat", type=int, default=1, help="fresh processes per case: median seconds (all runs), max MB")
    ap.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")), help="'' to not write")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.rows)))
        return 0
    if args.repeat < 1 or args.rows < 2:
        ap.error(f"--repeat must be >= 1 and --rows >= 2, got {args.repeat} and {args.rows}")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"--cases: unknown {bad}; choose from {','.join(CASES)}")

    command = shlex.join(["python", "benchmarks/grid_update.py", *(argv if argv is not None else sys.argv[1:])])
    # Eager KAN kernels: the model case times the grid update, not the first-use compilation of the forward.
    env = dict(os.environ, KANVISION_COMPILE="0")
    lines = [
        "", "# Grid update and build cost", "",
        f"- command: `{command.strip()}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}; "
        f"Python {platform.python_version()}; {args.threads} intra-op thread(s); CPU only; each case in a fresh "
        "process with KANVISION_COMPILE=0 (eager kernels)",
        f"- layer: BSplineKAN(768 -> 192).update_grid on {args.rows} rows; build: timm.create_model("
        "'kan_deit_base_patch16_224', kan='bspline', kan_hidden=192); model: update_grids on that model, "
        "8 images of 224x224 (1576 rows per layer, 24 layers), after one warm-up forward",
        "- peak MB: the process's peak resident memory (ru_maxrss); setup MB: its peak before the measured call; "
        "forward s: one no-grad forward of the batch (model case), which update_grids runs to capture inputs",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines.append(f"- load average before the run: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    lines += ["", "| case | seconds (median; all runs) | peak MB | setup MB | forward s |", "|---|---:|---:|---:|---:|"]
    for case in cases:
        runs = []
        for _ in range(args.repeat):
            proc = subprocess.run([sys.executable, __file__, "--child", case, "--threads", str(args.threads),
                                   "--rows", str(args.rows)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                print(f"grid_update benchmark: case {case!r} failed (exit {proc.returncode}); see the error above",
                      file=sys.stderr)
                return 1
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        seconds = sorted(r["seconds"] for r in runs)
        shown = f"{statistics.median(seconds):.2f}"
        if len(runs) > 1:
            shown += f" ({', '.join(f'{v:.2f}' for v in seconds)})"
        fwd = [r["forward"] for r in runs if r["forward"] is not None]
        fwd = f"{statistics.median(fwd):.2f}" if fwd else ""
        peak, setup = max(r["peak_mb"] for r in runs), max(r["setup_mb"] for r in runs)
        lines.append(f"| {case} | {shown} | {peak:.0f} | {setup:.0f} | {fwd} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
