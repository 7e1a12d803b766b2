"""The `kanvision` command: Lightning subcommands (fit/validate/test) plus the toolkit's own tools.

Tools are imported lazily so `kanvision params` does not pay for Lightning's import, and a tool whose
module fails to import does not break the others.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module, function taking argv, one-line help)
TOOLS = {
    "kinds": ("kanvision.kinds.table", "main", "the registered KAN kinds: formula, parameters per layer, defaults, source"),
    "params": ("kanvision.analysis.params", "main", "markdown table of parameter counts of the model zoo"),
    "export": ("kanvision.hub.checkpoints", "export_main", "export a run or .ckpt to model.safetensors + config.json"),
    "predict": ("kanvision.hub.predict", "main", "top-5 classes of image files from a checkpoint"),
    "analyze": ("kanvision.analysis.cli", "main", "hessian | memory | throughput | splines"),
    "gpu-check": ("kanvision.analysis.gpu_check", "main", "KAN parity, bf16 fits, DDP and speed on this machine's GPU"),
    "sweep": ("kanvision.sweep.runner", "main", "grid of `kanvision fit` runs (local or a SLURM array), resumable; results table"),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _usage() -> str:
    lines = ["usage: kanvision COMMAND [options]", "", "training (LightningCLI, see `kanvision fit --help`):"]
    lines += [f"  {c}" for c in LIGHTNING_COMMANDS]
    lines += ["", "tools:"] + [f"  {name:<10} {helptext}" for name, (_, _, helptext) in TOOLS.items()]
    return "\n".join(lines)


def main(args: list[str] | None = None):
    """Python callers get what the tool returns (analyze returns its results); the shell an exit status."""
    from_shell = args is None
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command = args[0]
    if command in TOOLS:
        module, func, _ = TOOLS[command]
        result = getattr(importlib.import_module(module), func)(args[1:])
        if from_shell and not isinstance(result, int):
            return 0  # the console script's sys.exit(result) would print a result list and exit 1
        return result
    if command in LIGHTNING_COMMANDS or command.startswith("-"):
        from kanvision.train.cli import lightning_main
        lightning_main(args)
        return None
    raise SystemExit(f"kanvision: unknown command {command!r}\n\n{_usage()}")


if __name__ == "__main__":
    raise SystemExit(main())
