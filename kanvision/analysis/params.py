"""`kanvision params`: markdown table of the zoo's parameter counts and FLOPs per image.

Models are built on the meta device (no memory, no init), so the full zoo takes seconds. Two FLOP counts per
model, one forward pass of one image at the model's default input size:

- **matmul** (GFLOPs matmul+conv): torch's FlopCounterMode, i.e. matrix products, convolutions and attention,
  2 FLOPs per multiply-add, biases not counted. A B-spline KAN layer in -> out on N rows is one product of
  the (N, in * (G + k + 1)) features [SiLU(x), B_0(x), ..., B_{G+k-1}(x)] with the combined weight:
  2 N in out (G + k + 1) (base branch included: the "+1"). An RSWAF layer: 2 N in out num_grids.
- **basis** (GFLOPs basis): the per-row elementwise work that builds the KAN bases, counted analytically by
  each kind's `Kind.basis_flops(layer)` (FLOPs per input value; the formulas and their derivations are in the kinds'
  modules) for every input value of every KAN layer (rows x in_features values per call).
  Neither count includes activations (SiLU base branch, the MLP's GELU), norms, softmax or residual adds: the MLP
  rows do not count theirs either.

Counting convention for the basis: one FLOP per add, subtract, multiply, divide, comparison, exp or tanh.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kanvision.kinds import available_kinds, kind_of_layer
from kanvision.models import count_parameters

__all__ = ["basis_flops_per_input", "count_flops", "main", "zoo_rows"]


def basis_flops_per_input(layer: nn.Module) -> int:
    kind = kind_of_layer(layer)
    if kind is None:
        raise TypeError(f"not a KAN layer: {type(layer).__name__}")
    return int(kind.basis_flops(layer))


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """{"matmul": FlopCounterMode's total, "basis": KAN basis FLOPs} of one forward pass `model(*inputs)`.

    Run it on meta tensors (as `kanvision params` does) or real ones; compiled KAN kernels are not seen by
    FlopCounterMode, but the matrix products are outside them and the basis is counted from the shapes.
    """
    basis = [0]

    def hook(mod, args, _out):
        x = args[0]
        basis[0] += x.numel() * basis_flops_per_input(mod)  # rows x in_features input values

    hooks = [m.register_forward_hook(hook) for m in model.modules() if kind_of_layer(m) is not None]
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return {"matmul": int(counter.get_total_flops()), "basis": int(basis[0])}


def _flops(model: torch.nn.Module) -> dict[str, int] | None:
    x = torch.empty(1, *model.pretrained_cfg["input_size"], device="meta")
    try:
        return count_flops(model.eval(), x)
    except Exception as e:  # an op without a meta kernel: say "n/a" (and why, on stderr) rather than guess
        print(f"kanvision params: FLOPs of {type(model).__name__} not counted: {type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return None


def zoo_rows(models: list[str], kinds: list[str], num_classes: int | None = None, kan_hidden: int | None = None,
             flops: bool = True) -> list[dict]:
    """One dict per (model, kind): params, kan_params, flops (matmul+conv) and basis_flops (None if skipped)."""
    rows = []
    for name in models:
        for kind in kinds:
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            if kind != "none" and kan_hidden is not None:
                kwargs["kan_hidden"] = kan_hidden
            with torch.device("meta"):
                model = timm.create_model(name, kan=kind, **kwargs)
            counts = count_parameters(model)
            f = _flops(model) if flops else None
            rows.append(dict(model=name, kind=kind, kan_hidden=kwargs.get("kan_hidden"), params=counts["trainable"],
                             kan_params=counts["kan"], flops=None if f is None else f["matmul"],
                             basis_flops=None if f is None else f["basis"]))
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| model | kan | params | in KAN layers | GFLOPs/image (matmul+conv) | GFLOPs/image (KAN basis) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        kind = r["kind"] if r["kan_hidden"] is None else f"{r['kind']} (hidden {r['kan_hidden']})"
        gflops = "n/a" if r["flops"] is None else f"{r['flops'] / 1e9:.2f}"
        basis = "n/a" if r.get("basis_flops") is None else f"{r['basis_flops'] / 1e9:.2f}"
        lines.append(f"| {r['model']} | {kind} | {r['params']:,} | {r['kan_params']:,} | {gflops} | {basis} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kanvision params", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["kan_*"], help="model names or patterns (default: kan_*)")
    parser.add_argument("--kan", nargs="+", default=list(available_kinds()),
                        help=f"kinds (default: {' '.join(available_kinds())})")
    parser.add_argument("--num-classes", type=int, default=None, help="head size (default: each model's own)")
    parser.add_argument("--kan-hidden", type=int, default=None, help="hidden width of the KAN MLPs")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    args = parser.parse_args(argv)

    zoo = timm.list_models("kan_*")
    names = []
    for pattern in args.models:
        found = fnmatch.filter(zoo, pattern)
        if not found:
            parser.error(f"no zoo model matches {pattern!r}; the zoo has: {', '.join(zoo)}")
        names += [n for n in found if n not in names]
    try:
        rows = zoo_rows(names, args.kan, args.num_classes, args.kan_hidden, flops=not args.no_flops)
    except ValueError as e:  # unknown kan kind and the like: the message already says what to do
        parser.error(str(e))
    print(to_markdown(rows))
    return 0
