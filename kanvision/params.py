"""`kanvision params`: markdown table of the zoo's parameter counts and matmul FLOPs per image.

Models are built on the meta device (no memory, no init), so the full zoo takes about a second.
FLOPs come from torch's FlopCounterMode over one forward pass at the model's default input size: they
count matrix multiplications, convolutions and attention (2 FLOPs per multiply-add) and NOT elementwise
work such as evaluating KAN bases, so for KAN models they are a lower bound.
"""
from __future__ import annotations

import argparse
import fnmatch

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from .layers.kan_mlp import KAN_KINDS
from .models import count_parameters

__all__ = ["main", "zoo_rows"]


def _flops(model: torch.nn.Module) -> int | None:
    x = torch.empty(1, *model.pretrained_cfg["input_size"], device="meta")
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model.eval()(x)
    except Exception:  # an op without a meta kernel: say "n/a" rather than guess
        return None
    return counter.get_total_flops()


def zoo_rows(models: list[str], kinds: list[str], num_classes: int | None = None, kan_hidden: int | None = None,
             flops: bool = True) -> list[dict]:
    rows = []
    for name in models:
        for kind in kinds:
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            if kind != "none" and kan_hidden is not None:
                kwargs["kan_hidden"] = kan_hidden
            with torch.device("meta"):
                model = timm.create_model(name, kan=kind, **kwargs)
            counts = count_parameters(model)
            rows.append(dict(model=name, kind=kind, kan_hidden=kwargs.get("kan_hidden"), params=counts["trainable"],
                             kan_params=counts["kan"], flops=_flops(model) if flops else None))
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| model | kan | params | in KAN layers | GFLOPs/image (matmul+conv) |", "|---|---|---:|---:|---:|"]
    for r in rows:
        kind = r["kind"] if r["kan_hidden"] is None else f"{r['kind']} (hidden {r['kan_hidden']})"
        gflops = "n/a" if r["flops"] is None else f"{r['flops'] / 1e9:.2f}"
        lines.append(f"| {r['model']} | {kind} | {r['params']:,} | {r['kan_params']:,} | {gflops} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kanvision params", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["kan_*"], help="model names or patterns (default: kan_*)")
    parser.add_argument("--kan", nargs="+", default=list(KAN_KINDS), help=f"kinds (default: {' '.join(KAN_KINDS)})")
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
