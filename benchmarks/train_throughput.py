"""Training throughput: images/s of real fits (Lightning Trainer, ImageClassifier, ImageDataModule), side by side
for the DataLoader (`--data.loader workers`) and the device loader (`device`), eager and compiled, for the MLP
(kan=none) and every KAN kind of each model, with each model's FLOP ratio to its MLP beside it (the speed a KAN
model could reach if it ran at its MLP's FLOP/s).

    .venv/bin/python benchmarks/train_throughput.py [--quick] [--models ...] [--kinds none bspline ...]
        [--batch 128] [--warmup 3] [--steps 10] [--loaders workers device] [--modes eager compiled]
        [--data-root DIR] [--workers N] [--precision P] [--repeats 1] [--out FILE.md]

Each cell is one fit of warmup + steps optimizer steps; the clock runs from the end of step `warmup` to the end
of the last step, with a device sync at both ends, so it counts the steps after warm-up (compilation, worker
start-up and the first copy of the data to the device happen in the warm-up) with their data loading, and
nothing of the set-up. No validation, checkpoints, logger or progress bar. The data is CIFAR-10 as an image
folder with --data-root DIR (DIR/train/<class>/*.png|jpg: the shipped recipes' copy is ~/data), else synthetic
images (on the workers path a synthetic image is a tensor: no PIL decode, so it flatters that path); augment
cifar (random crop with padding 4 + flip) on both loaders. The loaders' data modules are built once and shared
by all cells (the image folder is scanned and, for device, decoded or read from its cache once).
The FLOP ratio is kanvision.analysis.params.count_flops (matmul + KAN basis, forward, one image, meta device)
of the model with that kind over the same model with kan=none.

--quick: a short CPU run (a few minutes on an idle 2-core machine): batch 16, 2 warm-up + 4 timed steps,
compiled only for kan=none.
--repeats R runs every cell R times, loaders alternating (workers, device, workers, ...), and reports the
median: a shared machine's load then weighs on both alike.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from kanvision.device import cpu_name

from kanvision.device import synchronize
from kanvision.kinds import kind_names

MODELS = ("kan_mixer_tiny_p4_32", "kan_convmixer_128_8_p4", "kan_deit_tiny_patch4_32")


def machine() -> str:
    cpu = cpu_name() or platform.processor() or platform.machine()
    text = f"CPU {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text = f"GPU {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible); " + text
    return text


def flop_ratio(model: str, kind: str) -> float | None:
    from kanvision.analysis.params import count_flops
    from kanvision.train.module import ImageClassifier

    def flops(k):
        with torch.device("meta"):
            net = ImageClassifier(model=model, kan=k, num_classes=10).model
        counted = count_flops(net.eval(), torch.empty(1, 3, 32, 32, device="meta"))
        return counted["matmul"] + counted["basis"]
    try:
        return flops(kind) / flops("none")
    except Exception as e:  # an op without a meta kernel
        print(f"FLOPs of {model} kan={kind} not counted: {type(e).__name__}: {e}", file=sys.stderr)
        return None


class Clock(L.Callback):
    """Wall time from the end of step `warmup` to the end of the last step, synchronized at both ends."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.t0, self.t1, self.images = warmup, steps, None, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.warmup:
            synchronize(pl_module.device)
            self.t0 = time.perf_counter()
        elif step > self.warmup:
            self.images += len(batch[1])
            if step == self.warmup + self.steps:
                synchronize(pl_module.device)
                self.t1 = time.perf_counter()


def data_module(loader: str, args):
    from kanvision.data.datamodule import ImageDataModule

    root = Path(args.data_root).expanduser() if args.data_root else None
    common = dict(batch_size=args.batch, num_workers=args.workers, augment="cifar", loader=loader, seed=0,
                  train_eval_size=0)
    if root is not None:
        return ImageDataModule("imagefolder", root=str(root), val_split=0.1, mean=[0.4914, 0.4822, 0.4465],
                               std=[0.247, 0.2435, 0.2616], **common), f"CIFAR-10 image folder {root}"
    n = args.batch * (args.warmup + args.steps + 2)
    return ImageDataModule("synthetic", synthetic_size=n, **common), f"synthetic ({n} images)"


def run_cell(dm, model: str, kind: str, compiled: bool, args) -> float | str:
    from kanvision.train.module import ImageClassifier

    if compiled:
        torch._dynamo.reset()  # one process compiles many models: start each from an empty cache
    clock = Clock(args.warmup, args.steps)
    trainer = L.Trainer(max_steps=args.warmup + args.steps, accelerator="auto", devices=1, precision=args.precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        log_every_n_steps=10 ** 6, callbacks=[clock])
    try:
        module = ImageClassifier(model=model, kan=kind, num_classes=dm.num_classes, compile=compiled)
        trainer.fit(module, dm)
    except Exception as e:  # one failing cell (a compile error, memory) should not lose the table
        return f"error: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
    if clock.t1 is None:
        return "error: the fit ended before the timed steps"
    return clock.images / (clock.t1 - clock.t0)


def fmt(value) -> str:
    if value is None:
        return "not run"
    return value if isinstance(value, str) else f"{value:,.1f}"


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--kinds", nargs="+", default=["none", *kind_names()])
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--loaders", nargs="+", default=["workers", "device"], choices=["workers", "device"])
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--compiled-kinds", nargs="+", default=None,
                   help="kinds timed compiled (default: all; --quick: kan=none only)")
    p.add_argument("--data-root", default=None, help="a CIFAR-10 image folder (default: synthetic images)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--precision", default="bf16-mixed" if torch.cuda.is_available() else "32-true")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    quick = dict(batch=16, warmup=2, steps=4) if args.quick else dict(batch=128, warmup=3, steps=10)
    for key, value in quick.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    compiled_kinds = args.compiled_kinds or (["none"] if args.quick else args.kinds)

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    L.seed_everything(0, verbose=False)
    started, load0 = time.time(), os.getloadavg()
    modules = {loader: data_module(loader, args) for loader in args.loaders}
    source = next(iter(modules.values()))[1]
    # A first fit, not recorded: a fresh process's first timed steps ran several times slower than later cells'
    # (lazily built kernels and allocator pools), which would charge the first cell for the process.
    run_cell(modules[args.loaders[0]][0], args.models[0], args.kinds[0], False, args)
    results: dict = {}
    for model in args.models:
        for kind in args.kinds:
            for mode in args.modes:
                if mode == "compiled" and kind not in compiled_kinds:
                    continue
                for _ in range(args.repeats):
                    for loader in args.loaders:
                        value = run_cell(modules[loader][0], model, kind, mode == "compiled", args)
                        results.setdefault((model, kind, loader, mode), []).append(value)
                        print(f"{model} kan={kind} {loader} {mode}: {fmt(value)} img/s", flush=True)

    def cell(model, kind, loader, mode):
        values = results.get((model, kind, loader, mode))
        if not values:
            return None
        numbers = [v for v in values if isinstance(v, float)]
        return statistics.median(numbers) if numbers else values[0]

    lines = [f"Training images/s, {datetime.date.today()}: {machine()}.",
             f"Settings: batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps per cell, precision "
             f"{args.precision}, AdamW (fused on CUDA), {args.workers} DataLoader workers, augment cifar, "
             f"data: {source}; {args.repeats} run(s) per cell (median), loaders alternating. Load average "
             f"{load0[0]:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end; {(time.time() - started) / 60:.1f} min in all.", "",
             "| model | kan | FLOPs / MLP | workers eager | device eager | device / workers | workers compiled "
             "| device compiled | compiled / eager (device) |", "|" + " --- |" * 9]
    for model in args.models:
        for kind in args.kinds:
            r = flop_ratio(model, kind)
            cells = (("workers", "eager"), ("device", "eager"), ("workers", "compiled"), ("device", "compiled"))
            we, de, wc, dc = (cell(model, kind, lo, mo) for lo, mo in cells)
            lines.append(f"| {model} | {kind} | {f'{r:.2f}' if r else '-'} | {fmt(we)} | {fmt(de)} | {ratio(de, we)} | "
                         f"{fmt(wc)} | {fmt(dc)} | {ratio(dc, de)} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
