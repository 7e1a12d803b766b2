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


def _input_error_line(e: Exception) -> str | None:
    """One line for an error raised inside Lightning by what the user asked for, or None (a bug: keep the traceback).

    Lightning's MisconfigurationException is its "you asked for something this machine or setup cannot do"
    (an accelerator it does not have, too many devices...). An UnpicklingError from a weights-only load is a
    checkpoint refused because unpickling it could run code (LightningCLI reads --ckpt_path with
    torch.load(weights_only=True) before anything else; kanvision.hub.safe_load explains)."""
    import pickle
    import re

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    text = " ".join(str(e).split())
    if isinstance(e, MisconfigurationException):
        if text.startswith("No supported gpu backend found"):
            from kanvision.device import DeviceError, resolve_device
            try:
                resolve_device("cuda")
            except DeviceError as why:
                # "device 'cuda' asked for, but no CUDA device is usable here (...); use --device cpu"
                reason = str(why).split("asked for, but ", 1)[-1].replace("--device", "--trainer.accelerator")
                return f"--trainer.accelerator gpu: {reason}"
        return text
    if isinstance(e, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        found = re.search(r"GLOBAL (\S+)", text)
        named = f" ({found.group(1)})" if found else ""
        return (f"refused to load a checkpoint: it holds Python objects other than tensors and plain data{named}, and "
                "unpickling them could run code from the file; kanvision reads checkpoints with "
                "torch.load(weights_only=True) only")
    return None


def main(args: list[str] | None = None):
    """Python callers get what the tool returns (analyze returns its results); the shell an exit status."""
    from_shell = args is None
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command = args[0]
    from kanvision._quiet import install
    install()  # torch / Lightning messages a user cannot act on (kanvision/_quiet.py lists them)
    if command in TOOLS:
        module, func, _ = TOOLS[command]
        result = getattr(importlib.import_module(module), func)(args[1:])
        if from_shell and not isinstance(result, int):
            return 0  # the console script's sys.exit(result) would print a result list and exit 1
        return result
    if command in LIGHTNING_COMMANDS or command.startswith("-"):
        from kanvision.train.cli import lightning_main
        try:
            lightning_main(args)
        except Exception as e:  # noqa: BLE001 - only the user-input errors below become one line; others re-raise
            line = _input_error_line(e)
            if line is None:
                raise
            raise SystemExit(f"kanvision: error: {line}") from None
        return None
    raise SystemExit(f"kanvision: unknown command {command!r}\n\n{_usage()}")


if __name__ == "__main__":
    raise SystemExit(main())
