"""GR-KAN's MLP (KAT's `KAN`: rational -> Linear -> rational -> Linear) against timm's Mlp of the same widths.

    .venv/bin/python benchmarks/grkan.py [--tokens 8192] [--dims 192 768 192] [--threads N] [--runs 7]
                                         [--warmup 3] [--device cpu|cuda[:N]]

Median forward+backward time of one training step (input requires grad, fixed cotangent, gradients reset each
run) for: timm Mlp eager and under torch.compile; GRKANMlp with its eager kernels (compile=False), with its
compiled kernels (the default on a machine with a C++ compiler / Triton; on CUDA the Triton kernels), and under
torch.compile(model) (the rational traced into the model's graph). Ratios are against the Mlp of the same mode.
Target on a GPU: GRKANMlp <= 1.15 x Mlp; this script reports what it measures on the machine it runs on.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from timm.layers import Mlp

from kanvision.device import cpu_name, resolve_device, synchronize
from kanvision.kinds.grkan import GRKANMlp


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name() or platform.processor() or 'unknown CPU'}, {torch.get_num_threads()} threads"


def step_ms(module, x, cotangent, runs: int, warmup: int, device) -> float:
    params = list(module.parameters())

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        module(x).backward(cotangent)

    step()  # first call: absorbs torch.compile and kernel compilation
    times = []
    for i in range(warmup + runs):
        synchronize(device)
        t0 = time.perf_counter()
        step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--dims", type=int, nargs=3, default=(192, 768, 192), metavar=("IN", "HIDDEN", "OUT"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dim, hidden, out = args.dims
    torch.manual_seed(0)
    x = torch.randn(args.tokens, dim, device=device, requires_grad=True)
    cotangent = torch.randn(args.tokens, out, device=device)
    print(f"# GRKANMlp vs timm Mlp, {args.tokens} tokens x {dim} -> {hidden} -> {out}, float32, "
          f"forward+backward")
    print(f"- machine: {machine(device)} ({device}); torch {torch.__version__}")
    print(f"- timing: median of {args.runs} steps after {args.warmup} warm-up steps and one untimed first call")
    mlp = Mlp(dim, hidden, out).to(device)
    grkan = GRKANMlp(dim, hidden, out, device=device)
    eager_kernels = GRKANMlp(dim, hidden, out, device=device, compile=False, triton=False)
    rows = [("timm Mlp", "eager", mlp), ("timm Mlp", "torch.compile(model)", torch.compile(mlp)),
            ("GRKANMlp, eager kernels", "eager", eager_kernels),
            ("GRKANMlp, " + ("Triton" if device.type == "cuda" else "compiled") + " kernels", "eager", grkan),
            ("GRKANMlp", "torch.compile(model)", torch.compile(GRKANMlp(dim, hidden, out, device=device)))]
    base = {}
    print("\n| module | mode | fwd+bwd ms | x Mlp (same mode) |\n|---|---|---:|---:|")
    for name, mode, module in rows:
        ms = step_ms(module, x, cotangent, args.runs, args.warmup, device)
        base.setdefault(mode, ms)
        print(f"| {name} | {mode} | {ms:.2f} | {ms / base[mode]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
