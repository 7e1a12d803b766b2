"""The `kanvision` command: Lightning subcommands (fit/validate/test) plus the toolkit's own tools.

Tools are imported lazily so `kanvision params` does not pay for Lightning's import, and a tool whose
module fails to import does not break the others.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module, function taking argv, one-line help)
TOOLS = {
    "params": ("kanvision.params", "main", "markdown table of parameter counts of the model zoo"),
    "export": ("kanvision.checkpoints", "export_main", "export a run or .ckpt to model.safetensors + config.json"),
    "predict": ("kanvision.predict", "main", "top-5 classes of image files from a checkpoint"),
    "analyze": ("kanvision.analysis.cli", "main", "hessian | memory | throughput | splines"),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _usage() -> str:
    lines = ["usage: kanvision COMMAND [options]", "", "training (LightningCLI, see `kanvision fit --help`):"]
    lines += [f"  {c}" for c in LIGHTNING_COMMANDS]
    lines += ["", "tools:"] + [f"  {name:<9} {helptext}" for name, (_, _, helptext) in TOOLS.items()]
    return "\n".join(lines)


def lightning_main(args: list[str]) -> None:
    raise SystemExit("kanvision: training commands are not available yet")


def main(args: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command = args[0]
    if command in TOOLS:
        module, func, _ = TOOLS[command]
        return getattr(importlib.import_module(module), func)(args[1:])
    if command in LIGHTNING_COMMANDS or command.startswith("-"):
        return lightning_main(args)
    raise SystemExit(f"kanvision: unknown command {command!r}\n\n{_usage()}")


if __name__ == "__main__":
    main()
