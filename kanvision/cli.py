"""The `kanvision` command."""
from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if args is None else args)
    raise SystemExit(f"kanvision: no subcommands yet (got {args})")
