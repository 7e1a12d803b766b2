"""Which kernels a KAN layer's fast path runs: the layer's `compile` switch, and the Triton kernels picked on CUDA
(or under Triton's interpreter when asked), with one warning and today's compiled / eager kernels when Triton
cannot run. Shared by every kind that has Triton kernels (B-spline, RSWAF)."""
from __future__ import annotations

import importlib
import warnings

import torch

from kanvision.kinds.compile import compile_supported

__all__ = ["KERNELS", "kernel_switch", "triton_failed", "triton_has_failed", "triton_kernels"]


def _traced() -> bool:
    return torch.compiler.is_compiling()


KERNELS = {"auto": None, "triton": "triton", "compiled": True, "eager": False}


def kernel_switch(value, owner: str):
    """A layer's `compile` argument as the kernels read it: None (auto: the Triton kernels on CUDA where they
    apply, else compiled kernels where that works, else eager), "triton", True (compiled) or False (eager).
    None and booleans keep their meaning; the strings "auto", "triton", "compiled", "eager" name the choices."""
    if value is None or isinstance(value, (bool, int)):
        return None if value is None else bool(value)
    if isinstance(value, str) and value.strip().lower() in KERNELS:
        return KERNELS[value.strip().lower()]
    raise ValueError(f"{owner}: compile must be None, True, False or one of {', '.join(map(repr, KERNELS))}, "
                     f"got {value!r}")


_TRITON_FAILED: dict[str, str] = {}
_TRITON_TOLD: set[tuple[str, str]] = set()
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_failed(kind: str, error: Exception) -> None:
    """Record that `kind`'s Triton kernels failed: one warning, then today's kernels for the rest of the process."""
    if isinstance(error, torch.OutOfMemoryError):
        raise error
    text = str(error).strip()
    cause = f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"
    _TRITON_FAILED[kind] = cause
    warnings.warn(f"kanvision: the Triton kernel of {kind} failed ({cause}); {kind} layers run the compiled / "
                  "eager kernels from now on (same results, slower)", RuntimeWarning, stacklevel=3)


def triton_has_failed(kind: str) -> bool:
    """Whether `kind`'s Triton kernels failed earlier in this process (its layers then run today's kernels)."""
    return kind in _TRITON_FAILED


def triton_kernels(kind: str, module: str, x: torch.Tensor, cdtype: torch.dtype, switch, why_not: str | None):
    """The Triton kernel module (e.g. "kanvision.kinds.bspline.triton") for this call, or None for today's path.

    Auto (switch None): on CUDA where Triton works. "triton": also on the CPU under TRITON_INTERPRET=1 (Triton's
    interpreter, for the tests); where it cannot run, one warning per cause. `why_not`: the layer's reason the
    kernels do not apply to it now (non-uniform knots, ...), or None."""
    dev = x.device.type
    if switch not in (None, "triton") or _traced() or dev == "meta" or kind in _TRITON_FAILED:
        return None
    if dev == "cuda":
        ok, why = compile_supported("cuda")
        why = why_not or (None if ok else why)
        if why is None and not (x.dtype in _TRITON_DTYPES and cdtype in _TRITON_DTYPES):
            why = f"{x.dtype} inputs (the kernels take float16, bfloat16 and float32)"
    elif switch == "triton" and dev == "cpu":  # Triton's interpreter, if it was on when the kernels were imported
        why = why_not
    else:
        why = f"they run on CUDA (or on the CPU under TRITON_INTERPRET=1), not on {dev}"
    if why is None:
        try:
            kernels = importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - no usable Triton: today's kernels
            triton_failed(kind, e)
            return None
        if dev == "cuda" or kernels.INTERPRETED:
            return kernels
        why = "the CPU needs Triton's interpreter: TRITON_INTERPRET=1 set before the kernels are first imported"
    if switch == "triton" and (kind, why) not in _TRITON_TOLD:
        _TRITON_TOLD.add((kind, why))
        warnings.warn(f"kanvision: {kind} with compile='triton' runs the compiled / eager kernels: {why}",
                      RuntimeWarning, stacklevel=4)
    return None
