"""`kanvision kinds`: the registered KAN kinds as a markdown table (formula, parameters per layer, defaults, source)."""
from __future__ import annotations

import argparse

from kanvision.kinds.registry import get_kind, kind_names

__all__ = ["kinds_table", "main"]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a formula's |x| must not split the markdown row


def kinds_table(in_features: int = 192, out_features: int = 192) -> str:
    rows = [f"| kind | name | y = | params per layer {in_features} -> {out_features} | MLP hidden | fast path | "
            "grid update | defaults | published code |", "|---|---|---|---:|---|---|---|---|---|"]
    for name in kind_names():
        k = get_kind(name)
        defaults = ", ".join(f"{a}={v!r}" for a, v in k.defaults.items()) or "published"
        hidden = "host MLP's (e.g. 4 dim)" if k.hidden == "mlp" else "dim"
        rows.append(f"| `{k.name}` | {_cell(k.title)} | {_cell(k.formula)} | "
                    f"{k.params(in_features, out_features, dict(k.defaults)):,} | {hidden} | {k.fused or 'eager'} | "
                    f"{'yes' if k.grid_update else 'no'} | {_cell(defaults)} | {_cell(k.source)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kanvision kinds", description=__doc__)
    p.add_argument("--in-features", type=int, default=192, help="layer input width for the parameter column")
    p.add_argument("--out-features", type=int, default=192, help="layer output width for the parameter column")
    args = p.parse_args(argv)
    if args.in_features < 1 or args.out_features < 1:
        p.error("--in-features and --out-features must be positive integers")
    print(kinds_table(args.in_features, args.out_features))
    return 0
