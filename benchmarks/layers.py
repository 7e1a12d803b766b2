"""KAN layer speed and training memory against the matrix-multiply floor and PyPI peers.

    .venv/bin/python benchmarks/layers.py [--threads 2] [--runs 7] [--warmup 3] [--device cpu|cuda[:N]]
                                          [--out benchmarks/RESULTS.md]

Per shape (N rows, in -> out) and implementation: median forward time (torch.no_grad), median
forward+backward time (input requires grad, fixed cotangent, grads reset each run), and the extra memory of
a training step. The floor is one nn.Linear on an already materialised (N, in * width) input that also
requires grad: width = grid_size + order + 1 for B-splines (base branch included), 8 for RSWAF. It is measured
two ways: with its (N, in * width) input gradient written into one buffer reused every step (`ReusedGradFloor`,
the same reuse our kernels get from their feature scratch; the ratios use this floor), and through plain
autograd, which allocates that gradient afresh each step (the floor of earlier runs; on the CPU a fresh buffer
above 32 MB is new mmapped memory, which made that floor slower and our ratios look better). The ratios also
give each layer's time over the plain nn.Linear(in, out) of the unexpanded width (the MLP layer row).
Peers (`pip install -e .[bench]`): flashkan and inkan KANLayer, uniform cubic B-spline, grid 5, their
defaults (both torch.compile their basis).

A second table (CUDA only; on the CPU each of its rows says "not run on a GPU") times the fused Triton kernels
(compile="triton": kinds/bspline/triton.py, kinds/rswaf/triton.py) under bf16 autocast at 8192 x 192 -> 192 and
32768 x 192 -> 768 (`--kernel-shapes`), beside today's compiled kernels and flashkan under the same autocast,
against the dense floor: the three bf16 matmuls of a training step (y = X W^T, dW = dY^T X, dX = dY W) on a
materialised X of in * width columns. A Triton row whose kernels failed and fell back says so.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

from kanvision.analysis.memory import saved_tensor_bytes
from kanvision.device import DeviceError, cpu_name, resolve_device, synchronize
from kanvision.layers import BSplineKAN, RSWAFKAN
from kanvision.kinds.workspace import release_scratch, scratch_bytes

SHAPES = [(8192, 192, 192), (4096, 384, 1536), (16384, 64, 256)]
KERNEL_SHAPES = [(8192, 192, 192), (32768, 192, 768)]  # issue 23: fused kernels <= 1.3x this dense floor
GRID, ORDER, RSWAF_GRIDS = 5, 3, 8


def cpu_model() -> str:
    return cpu_name() or platform.processor() or "unknown"


def peer(name: str):
    def build(i, o):
        module = __import__(name)
        return module.KANLayer(i, o, grid_size=GRID, spline_order=ORDER)
    return build


def updated(layer: BSplineKAN) -> BSplineKAN:
    """The layer after a grid update (non-uniform knots), fitted to inputs like the benchmark's."""
    gen = torch.Generator().manual_seed(1)
    layer.update_grid(torch.rand(4096, layer.in_features, generator=gen) * 2.4 - 1.2)
    return layer


class ReusedGradFloor(nn.Linear):
    """The matmul floor with its input gradient written into one buffer kept between steps.

    Same three products as nn.Linear's training step (forward, weight gradient, input gradient), the first two
    through autograd with fresh outputs like every layer here, the (N, in * width) input gradient into a reused
    buffer, as our kernels write their (N, in * width) feature gradient into their reused feature scratch.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grad_input: torch.Tensor | None = None

    def train_step(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        nn.functional.linear(x.detach(), self.weight, self.bias).backward(grad)
        if self.grad_input is None or self.grad_input.shape != x.shape or self.grad_input.device != x.device:
            self.grad_input = torch.empty_like(x, requires_grad=False)
        torch.mm(grad, self.weight.detach(), out=self.grad_input)


FLOOR_REUSED, FLOOR_FRESH = "reused input-grad buffer", "autograd, fresh input grad"


def rows_for(i: int) -> list[tuple[str, int, object]]:
    """(label, input width, builder(in, out)): input width != in means a floor on a wide input."""
    wb = GRID + ORDER + 1
    return [
        ("nn.Linear (MLP layer)", i, lambda a, b: nn.Linear(a, b)),
        (f"floor B-spline: nn.Linear({i}*{wb}), {FLOOR_REUSED}", i * wb, lambda a, b: ReusedGradFloor(a, b, bias=False)),
        (f"floor B-spline: nn.Linear({i}*{wb}), {FLOOR_FRESH}", i * wb, lambda a, b: nn.Linear(a, b, bias=False)),
        ("B-spline reference", i, lambda a, b: BSplineKAN(a, b, impl="reference")),
        ("B-spline fast eager", i, lambda a, b: BSplineKAN(a, b, impl="fast", compile=False)),
        ("B-spline fast compiled", i, lambda a, b: BSplineKAN(a, b, impl="fast", compile=True)),
        ("B-spline default (BSplineKAN(in, out))", i, lambda a, b: BSplineKAN(a, b)),
        ("B-spline fast eager, updated grid", i, lambda a, b: updated(BSplineKAN(a, b, compile=False))),
        ("B-spline default, updated grid", i, lambda a, b: updated(BSplineKAN(a, b))),
        ("flashkan KANLayer", i, peer("flashkan")),
        ("inkan KANLayer", i, peer("inkan")),
        (f"floor RSWAF: nn.Linear({i}*{RSWAF_GRIDS}), {FLOOR_REUSED}", i * RSWAF_GRIDS,
         lambda a, b: ReusedGradFloor(a, b, bias=False)),
        (f"floor RSWAF: nn.Linear({i}*{RSWAF_GRIDS}), {FLOOR_FRESH}", i * RSWAF_GRIDS,
         lambda a, b: nn.Linear(a, b, bias=False)),
        ("RSWAF reference", i, lambda a, b: RSWAFKAN(a, b, impl="reference")),
        ("RSWAF fast eager", i, lambda a, b: RSWAFKAN(a, b, impl="fast", compile=False)),
        ("RSWAF fast compiled", i, lambda a, b: RSWAFKAN(a, b, impl="fast", compile=True)),
        ("RSWAF default (RSWAFKAN(in, out))", i, lambda a, b: RSWAFKAN(a, b)),
    ]


def median_ms(fn, runs: int, warmup: int, device="cpu") -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        synchronize(device)  # GPU kernels run asynchronously: time the work, not its launch
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def training_step_bytes(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[int, int]:
    """(bytes saved for backward (distinct storages, parameters excluded, the input included if saved) + output,
    bytes of the scratch buffers the step left allocated)."""
    release_scratch()
    saved, y = saved_tensor_bytes(layer, lambda: layer(x))
    total = saved + y.untyped_storage().nbytes()
    y.backward(grad)
    return total, scratch_bytes()


def bench_row(build, n, width, out, runs, warmup, device="cpu") -> dict:
    torch.manual_seed(0)
    layer = build(width, out).to(device)
    x = (torch.rand(n, width) * 2.4 - 1.2).to(device).requires_grad_()  # ~1/6 of entries beyond grid_range
    grad = torch.randn(n, out).to(device)

    def fwd():
        with torch.no_grad():
            layer(x)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        if isinstance(layer, ReusedGradFloor):
            layer.train_step(x, grad)
        else:
            layer(x).backward(grad)

    step()  # first call outside the timers: torch.compile traces here
    fwd()
    result = {"fwd": median_ms(fwd, runs, warmup, device), "step": median_ms(step, runs, warmup, device)}
    result["mem"], result["scratch"] = training_step_bytes(layer, x, grad)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--shapes", default=None, help="e.g. '8192x192x192,4096x384x1536' (N x in x out)")
    ap.add_argument("--only", default=None, help="comma-separated substrings of row labels to run")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")), help="'' to not write")
    ap.add_argument("--note", default="", help="free text added to the method (e.g. machine load)")
    ap.add_argument("--kernel-shapes", default=None, help="shapes of the Triton kernel table (CUDA only), as --shapes")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        raise SystemExit("--threads and --runs must be >= 1, --warmup >= 0")
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
        assert all(len(s) == 3 for s in shapes)
    except (ValueError, AssertionError):
        raise SystemExit(f"--shapes must look like 8192x192x192[,N x in x out...], got {args.shapes!r}")
    try:
        device = resolve_device(args.device)
    except DeviceError as e:
        raise SystemExit(f"benchmarks/layers.py: {e}") from None
    torch.set_num_threads(args.threads)
    where = (f"GPU: {torch.cuda.get_device_name(device)} (CPU {cpu_model()})" if device.type == "cuda"
             else f"CPU: {cpu_model()} ({torch.get_num_threads()} threads used)")

    lines = [
        "# KAN layer benchmark",
        "",
        f"- command: `{' '.join(['python', 'benchmarks/layers.py', *(argv if argv is not None else sys.argv[1:])])}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; {where}; torch {torch.__version__}; "
        f"Python {platform.python_version()}",
        f"- timing: median of {args.runs} runs after {args.warmup} warm-up runs (plus one untimed first call that "
        "absorbs torch.compile), each timed between synchronizations of the device; floors: the faster of two such "
        "measurements; forward under "
        "torch.no_grad; forward+backward = forward, backward of a fixed random cotangent with the input requiring "
        "grad",
        "- memory: training-step extra = bytes of the distinct tensors saved for backward (via "
        "torch.autograd.graph.saved_tensors_hooks; parameters excluded, the layer input counted when saved) plus "
        "the output; transient buffers freed inside forward/backward are not counted. scratch = the fast kernels' "
        "reused feature buffers (kanvision.kinds.workspace), held between steps and shared by every KAN layer "
        "of a model (sized by its largest layer call); they spare the CPU a page-faulting fresh buffer per call",
        f"- layers: B-spline grid {GRID}, order {ORDER} (efficient-kan defaults), RSWAF {RSWAF_GRIDS} centres; "
        "inputs uniform in [-1.2, 1.2]; floor = nn.Linear without bias on a materialised input of in*width "
        "columns that requires grad (width 9 for B-spline, 8 for RSWAF), timed with its input gradient in a reused "
        "buffer (as our kernels reuse their feature scratch; the ratios use it) and through plain autograd (a fresh "
        "input gradient each step; its ratio column is its time over the reused-buffer floor)",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| shape (N, in->out) | implementation | forward ms | fwd+bwd ms | fwd+bwd / floor | train-step extra MB "
              "| scratch MB |", "|---|---|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    results = {}
    for n, i, o in shapes:
        floors = {}
        for label, width, build in rows_for(i):
            if args.only and not any(s.strip() in label for s in args.only.split(",")):
                continue
            try:
                r = bench_row(build, n, width, o, args.runs, args.warmup, device)
                if label.startswith("floor"):
                    # The floor is a lower bound: keep the faster of two measurements (the first matmul-heavy
                    # row of a fresh process has measured up to 2.4x slow here, flattering every ratio).
                    again = bench_row(build, n, width, o, args.runs, args.warmup, device)
                    r = min(r, again, key=lambda v: v["step"])
            except Exception as e:  # noqa: BLE001 - a peer that cannot run here is reported, not fatal
                traceback.print_exc(file=sys.stderr)
                row = f"| {n}, {i}->{o} | {label} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''} | | | | |"
                print(row, flush=True)
                lines.append(row)
                continue
            results[(n, i, o, label)] = r
            kind = "RSWAF" if "RSWAF" in label else "B-spline"
            if label.startswith("floor") and kind not in floors:  # the reused-buffer floor comes first
                floors[kind] = r["step"]
            ratio = f"{r['step'] / floors[kind]:.2f}" if kind in floors and "nn.Linear (MLP" not in label else ""
            row = (f"| {n}, {i}->{o} | {label} | {r['fwd']:.1f} | {r['step']:.1f} | {ratio} | "
                   f"{r['mem'] / 2**20:.1f} | {r['scratch'] / 2**20:.1f} |")
            print(row, flush=True)
            lines.append(row)
    lines += ["", *summary(results, shapes)]
    print("\n".join(summary(results, shapes)))
    try:
        kshapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.kernel_shapes.split(",")] \
            if args.kernel_shapes else KERNEL_SHAPES
        assert all(len(s) == 3 for s in kshapes)
    except (ValueError, AssertionError):
        raise SystemExit(f"--kernel-shapes must look like 8192x192x192[,...], got {args.kernel_shapes!r}")
    lines += ["", *kernel_table(kshapes, args, device)]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"\nwritten to {args.out}")
    return 0


def kernel_rows(i: int) -> list[tuple[str, int, object]]:
    """(label, floor width or 0, builder): the Triton kernel table's rows; a floor row precedes its kind's rows."""
    wb = GRID + ORDER + 1
    return [
        (f"floor B-spline: bf16 matmuls, {i}*{wb} wide", wb, None),
        ("B-spline triton (compile='triton')", 0, lambda a, b: BSplineKAN(a, b, compile="triton")),
        ("B-spline compiled (compile=True, today's path)", 0, lambda a, b: BSplineKAN(a, b, compile=True)),
        ("flashkan KANLayer", 0, peer("flashkan")),
        (f"floor RSWAF: bf16 matmuls, {i}*{RSWAF_GRIDS} wide", RSWAF_GRIDS, None),
        ("RSWAF triton (compile='triton')", 0, lambda a, b: RSWAFKAN(a, b, compile="triton")),
        ("RSWAF compiled (compile=True, today's path)", 0, lambda a, b: RSWAFKAN(a, b, compile=True)),
    ]


def bf16_floor(n: int, width: int, out: int, runs: int, warmup: int, device) -> dict:
    """Median ms of y = X W^T (forward) and of the three matmuls of a training step, all bf16 (fp32 accumulate)."""
    gen = dict(device=device, dtype=torch.bfloat16)
    x, w, g = torch.randn(n, width, **gen), torch.randn(out, width, **gen), torch.randn(n, out, **gen)

    def step():
        torch.mm(x, w.t())
        torch.mm(g.t(), x)
        torch.mm(g, w)

    return {"fwd": median_ms(lambda: torch.mm(x, w.t()), runs, warmup, device),
            "step": median_ms(step, runs, warmup, device)}


def autocast_row(build, n, i, out, runs, warmup, device) -> dict:
    """bench_row's two timings with forward under bf16 autocast (float32 parameters, inputs and cotangent)."""
    torch.manual_seed(0)
    layer = build(i, out).to(device)
    x = (torch.rand(n, i) * 2.4 - 1.2).to(device).requires_grad_()
    grad = torch.randn(n, out).to(device)

    def fwd():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            layer(x)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = layer(x)
        y.backward(grad.to(y.dtype))

    with warnings.catch_warnings(record=True) as caught:  # a Triton row that fell back says so (see kernel_table)
        warnings.simplefilter("always")
        step()  # compiles (Triton, inductor) and autotunes outside the timers
        fwd()
    said = [str(w.message) for w in caught if "triton" in str(w.message).lower()]
    return {"fwd": median_ms(fwd, runs, warmup, device), "step": median_ms(step, runs, warmup, device),
            "fell_back": said[0] if said else None}


def kernel_table(shapes, args, device) -> list[str]:
    """The fused-kernel table (see the module doc): printed as it goes, returned for the results file."""
    lines = ["## Fused Triton kernels, bf16 autocast (CUDA)", "",
             "| shape (N, in->out) | implementation | forward ms | fwd+bwd ms | fwd+bwd / bf16 floor |",
             "|---|---|---:|---:|---:|"]
    print("\n" + "\n".join(lines), flush=True)
    for n, i, o in shapes:
        floor = None
        for label, width, build in kernel_rows(i):
            if args.only and not width and not any(s.strip() in label for s in args.only.split(",")):
                continue
            if device.type != "cuda":
                row = f"| {n}, {i}->{o} | {label} | not run on a GPU | | |"
            else:
                try:
                    if width:
                        r = floor = bf16_floor(n, i * width, o, args.runs, args.warmup, device)
                    else:
                        r = autocast_row(build, n, i, o, args.runs, args.warmup, device)
                    fell = r.get("fell_back") if "triton" in label else None
                    ratio = f"{r['step'] / floor['step']:.2f}" if floor and not width else ""
                    row = (f"| {n}, {i}->{o} | {label}{f' (FELL BACK: {fell})' if fell else ''} | {r['fwd']:.2f} | "
                           f"{r['step']:.2f} | {ratio} |")
                except Exception as e:  # noqa: BLE001 - a peer or kernel that cannot run is reported, not fatal
                    traceback.print_exc(file=sys.stderr)
                    why = str(e).splitlines()[0][:120] if str(e) else ""
                    row = f"| {n}, {i}->{o} | {label} | failed: {type(e).__name__}: {why} | | |"
            print(row, flush=True)
            lines.append(row)
    return lines


def summary(results: dict, shapes) -> list[str]:
    out = ["## Ratios (fwd+bwd time; memory at the same shape)", ""]
    for n, i, o in shapes:
        r = {k[3]: v for k, v in results.items() if k[:3] == (n, i, o)}

        def floor(kind, how):
            return next((v for k, v in r.items() if k.startswith(f"floor {kind}") and k.endswith(how)), None)

        floor_b, floor_r = floor("B-spline", FLOOR_REUSED), floor("RSWAF", FLOOR_REUSED)
        fresh_b, fresh_r = floor("B-spline", FLOOR_FRESH), floor("RSWAF", FLOOR_FRESH)
        mlp = r.get("nn.Linear (MLP layer)")

        def others(v, fresh):
            return [f"{v['step'] / fresh['step']:.2f}x the autograd floor (fresh input grad)" if fresh else None,
                    f"{v['step'] / mlp['step']:.2f}x nn.Linear({i}, {o})" if mlp else None]

        parts = []
        for kind, reused, fresh in (("B-spline", floor_b, fresh_b), ("RSWAF", floor_r, fresh_r)):
            if reused and fresh:
                parts.append(f"- {kind} floor: autograd (fresh input grad) {fresh['step'] / reused['step']:.2f}x the "
                             "reused-buffer floor" + (f"; reused-buffer floor {reused['step'] / mlp['step']:.2f}x "
                                                     f"nn.Linear({i}, {o})" if mlp else ""))
        ref = r.get("B-spline reference")
        for name in ("B-spline fast eager", "B-spline fast compiled", "B-spline default (BSplineKAN(in, out))",
                     "B-spline fast eager, updated grid", "B-spline default, updated grid"):
            if name in r:
                v = r[name]
                bits = [f"{v['step'] / floor_b['step']:.2f}x floor" if floor_b else None, *others(v, fresh_b),
                        f"{ref['step'] / v['step']:.1f}x faster than reference" if ref else None,
                        f"memory {v['mem'] / ref['mem']:.3f} of reference "
                        f"({(v['mem'] + v['scratch']) / ref['mem']:.3f} with its scratch)" if ref else None]
                bits += [f"{p.split()[0]} time / ours {r[p]['step'] / v['step']:.2f} (> 1: we are faster)" for p in
                         ("flashkan KANLayer", "inkan KANLayer") if p in r]
                before = r.get(name.replace(", updated grid", "").replace("default", "default (BSplineKAN(in, out))"))
                if "updated grid" in name and before:
                    bits.append(f"{v['step'] / before['step']:.2f}x the time before the grid update")
                parts.append(f"- {name}: " + ", ".join(b for b in bits if b))
        for name in ("RSWAF fast eager", "RSWAF fast compiled", "RSWAF default (RSWAFKAN(in, out))"):
            if name in r and floor_r:
                v, rr = r[name], r.get("RSWAF reference")
                bits = [f"{v['step'] / floor_r['step']:.2f}x floor", *others(v, fresh_r),
                        f"{rr['step'] / v['step']:.1f}x faster than reference" if rr else None]
                parts.append(f"- {name}: " + ", ".join(b for b in bits if b))
        if parts:
            out += [f"N={n}, {i}->{o}:", *parts, ""]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
