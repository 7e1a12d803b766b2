"""FastKAN, ChebyKAN and KAGN: our layers against their published formulas and the matrix-multiply floor.

    .venv/bin/python benchmarks/kinds.py [--rows 8192] [--dim 192] [--runs 5] [--warmup 2] [--threads N]
                                         [--kinds fastkan chebykan kagn]

Per kind, forward + backward of one layer (rows x dim -> dim, input requires grad, fixed cotangent, gradients
reset each run), median wall time over --runs after --warmup runs, side by side:
- ours, eager: the layer with compile=False (its autograd Function, basis rebuilt in backward);
- ours, compiled: compile=True (the same Function with its basis kernels compiled by torch.compile; the warm-up
  runs include the compilation, which is not timed);
- published formula, eager: the published forward re-typed below as a plain module (autograd keeps what it keeps),
  loaded with our layer's state dict (the keys are the published ones), its output checked against ours;
- matmul floor: one nn.Linear(dim * K, dim) on an already materialised (rows, dim * K) input that requires grad,
  K = the feature slots per input (FastKAN 8 centres + base = 9, ChebyKAN degree 4 + 1 = 5, KAGN 4 Gram + base = 5):
  the matrix products alone, no basis work. Its (rows, dim * K) input gradient is a fresh allocation each step,
  while our kernels reuse scratch buffers for theirs, so a kind with little basis work can come in under it.
The saved column is what autograd keeps for backward (distinct storages, parameters excluded), in MB.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

from kanvision.device import cpu_name
import torch.nn.functional as F
from torch import nn

from kanvision.analysis.memory import saved_tensor_bytes
from kanvision.kinds.chebykan import ChebyKANLayer
from kanvision.kinds.fastkan import FastKANLayer
from kanvision.kinds.kagn import KAGNLayer


class PublishedFastKAN(nn.Module):
    """ZiyaoLi/fast-kan FastKANLayer.forward as published (defaults: 8 centres on [-2, 2], h = 4/7, SiLU base)."""

    def __init__(self, i, o):
        super().__init__()
        self.layernorm = nn.LayerNorm(i)
        self.rbf = nn.Module()
        self.rbf.grid = nn.Parameter(torch.linspace(-2, 2, 8), requires_grad=False)
        self.h = 4 / 7
        self.spline_linear = nn.Linear(i * 8, o, bias=False)
        self.base_linear = nn.Linear(i, o)

    def forward(self, x):
        basis = torch.exp(-((self.layernorm(x)[..., None] - self.rbf.grid) / self.h) ** 2)
        return self.spline_linear(basis.view(*basis.shape[:-2], -1)) + self.base_linear(F.silu(x))


class PublishedChebyKAN(nn.Module):
    """SynodicMonth/ChebyKAN ChebyKANLayer.forward as published: T_d = cos(d acos(tanh x)), einsum."""

    def __init__(self, i, o, degree=4):
        super().__init__()
        self.i, self.o, self.degree = i, o, degree
        self.cheby_coeffs = nn.Parameter(torch.empty(i, o, degree + 1))
        self.register_buffer("arange", torch.arange(0, degree + 1, 1))

    def forward(self, x):
        t = torch.tanh(x).view(-1, self.i, 1).expand(-1, -1, self.degree + 1).acos()
        t = t * self.arange  # published: in place on the acos output
        return torch.einsum("bid,iod->bo", t.cos(), self.cheby_coeffs).view(-1, self.o)


class PublishedGRAM(nn.Module):
    """IvanDrokin/torch-conv-kan GRAMLayer.forward as published (without its lru_cache on the input tensor)."""

    def __init__(self, i, o, degree=3):
        super().__init__()
        self.o, self.degree = o, degree
        self.norm = nn.LayerNorm(o)
        self.beta_weights = nn.Parameter(torch.zeros(degree + 1))
        self.grams_basis_weights = nn.Parameter(torch.zeros(i, o, degree + 1))
        self.base_weights = nn.Parameter(torch.zeros(o, i))

    def beta(self, n, m):
        return (((m + n) * (m - n) * n ** 2) / (m ** 2 / (4.0 * n ** 2 - 1.0))) * self.beta_weights[n]

    def forward(self, x):
        basis = F.linear(F.silu(x), self.base_weights)
        z = torch.tanh(x).contiguous()
        p0, p1 = z.new_ones(z.size()), z
        polys = [p0, p1]
        for d in range(2, self.degree + 1):
            p2 = z * p1 - self.beta(d - 1, d) * p0
            polys.append(p2)
            p0, p1 = p1, p2
        grams = F.silu(torch.stack(polys, dim=-1))
        y = torch.einsum("bld,lod->bo", grams, self.grams_basis_weights)
        return F.silu(self.norm(y + basis)).view(-1, self.o)


KINDS = {  # name: (ours, published, feature slots K for the matmul floor)
    "fastkan": (FastKANLayer, PublishedFastKAN, 9),
    "chebykan": (ChebyKANLayer, PublishedChebyKAN, 5),
    "kagn": (KAGNLayer, PublishedGRAM, 5),
}


def cpu_model() -> str:
    return cpu_name() or platform.processor() or "unknown"


def median_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def train_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def step():
        layer.zero_grad(set_to_none=True)
        xx = x.detach().requires_grad_()
        layer(xx).backward(grad)
    return step


def bench_kind(name: str, rows: int, dim: int, runs: int, warmup: int) -> list[tuple[str, float, float]]:
    ours_cls, published_cls, slots = KINDS[name]
    torch.manual_seed(0)
    x = torch.randn(rows, dim)
    grad = torch.randn(rows, dim)
    eager = ours_cls(dim, dim, compile=False)
    if name == "kagn":  # the published init draws beta ~ N(0, 1/(4 dim)): make the recurrence's beta terms count
        with torch.no_grad():
            eager.beta_weights.normal_(0, 0.3)
    compiled = ours_cls(dim, dim, compile=True)
    compiled.load_state_dict(eager.state_dict())
    published = published_cls(dim, dim)
    published.load_state_dict(eager.state_dict())  # same keys, same layout
    with torch.no_grad():
        diff = (published(x[:256]) - eager(x[:256])).abs().max().item()
    floor = nn.Linear(dim * slots, dim)
    feats = torch.randn(rows, dim * slots)
    rows_out = []
    for label, layer, inp in (("ours, eager", eager, x), ("ours, compiled", compiled, x),
                              ("published formula, eager", published, x),
                              (f"matmul floor (Linear {dim * slots} -> {dim})", floor, feats)):
        ms = median_ms(train_step(layer, inp, grad), runs, warmup + (2 if layer is compiled else 0))
        saved, _ = saved_tensor_bytes(layer, lambda: layer(inp.detach().requires_grad_()))
        rows_out.append((label, ms, saved / 2 ** 20))
    print(f"\n{name}: {rows} x {dim} -> {dim}, float32, forward + backward; published vs ours max |dy| = {diff:.2e}")
    floor_ms = rows_out[-1][1]
    print(f"  {'implementation':<36} {'ms':>9} {'x floor':>8} {'saved MB':>9}")
    for label, ms, mb in rows_out:
        print(f"  {label:<36} {ms:9.1f} {ms / floor_ms:8.2f} {mb:9.1f}")
    return rows_out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"# kanvision benchmarks/kinds.py, {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load[0]:.2f}" if load[0] != "?" else "")
    print(f"# settings: rows {args.rows}, {args.dim} -> {args.dim}, median of {args.runs} runs after {args.warmup} "
          f"warm-up runs (compiled: 2 more, compilation untimed), python {sys.version.split()[0]}")
    for name in args.kinds:
        bench_kind(name, args.rows, args.dim, args.runs, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
