"""torch.compile for the KAN kernels: one compiled function per kernel variant, eager where one cannot compile.

A variant is everything dynamo would otherwise guard on and recompile for: kernel, input width, spline
order, uniform or not, activation, dtypes, device type, and whether it runs under inference mode. Each
variant gets its own code object, so dynamo's per-code-object recompile limit counts the recompiles of that
variant alone instead of every layer, dtype and mode of the process sharing 8 slots. The batch dimension is
marked dynamic from the first call, so a smaller last batch or a validation batch reuses the same graph. A variant that fails to compile warns once with its cause and runs eager; the others keep
compiling.

The layer switch `compile=None` (the default) means "compile where it can work": CPU with a C++ compiler
for inductor, or CUDA with Triton; `KANVISION_COMPILE=0` in the environment opts out everywhere.
"""
from __future__ import annotations

import os
import shutil
import types
import warnings
from functools import lru_cache
from importlib.util import find_spec

import torch

__all__ = ["compile_failures", "compile_supported", "compiled_kernel", "kernel_graphs", "run_compiled", "use_compiled"]

_VARIANTS: dict[tuple, object] = {}
_CODES: dict[tuple, types.CodeType] = {}
_FAILURES: dict[tuple, str] = {}


@lru_cache(maxsize=None)
def compile_supported(device_type: str) -> tuple[bool, str]:
    """(can the kernels compile on this device type, why not)."""
    if os.environ.get("KANVISION_COMPILE", "").strip().lower() in ("0", "false", "no", "off"):
        return False, "KANVISION_COMPILE=0"
    if device_type == "cpu":
        if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
            return False, "no C++ compiler on PATH (inductor's CPU backend needs one)"
        return True, ""
    if device_type == "cuda":
        return (True, "") if find_spec("triton") else (False, "Triton is not installed")
    return False, f"kernels are compiled for cpu and cuda only, not {device_type}"


def use_compiled(switch: bool | None, device: torch.device) -> bool:
    """Resolve a layer's `compile` switch (None = automatic) for a call on `device`; an explicit True that
    cannot be honoured says why, once per device type."""
    if switch is False:
        return False
    ok, why = compile_supported(device.type)
    if not ok and switch is True and device.type not in _TOLD:
        _TOLD.add(device.type)
        warnings.warn(f"kanvision: KAN kernels asked to compile (compile=True) run eager on {device.type}: {why}",
                      RuntimeWarning, stacklevel=3)
    return ok


_TOLD: set[str] = set()


def _own_code(fn, tag: str):
    # A copy of fn with a code object of its own: dynamo keeps compiled graphs (and counts recompiles) per code object.
    code = fn.__code__.replace(co_name=f"{fn.__name__}__{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def compiled_kernel(fn, variant: tuple):
    """The compiled function for (fn, variant), or None when that variant failed to compile before."""
    key = (fn.__module__, fn.__qualname__, *variant)
    if key in _FAILURES:
        return None
    compiled = _VARIANTS.get(key)
    if compiled is None:
        from kanvision._quiet import quiet_compile
        quiet_compile()  # the "No CUDA runtime is found, using CUDA_HOME" line inductor's probe logs on CPU machines
        tag = "_".join(str(v).replace("torch.", "").replace(".", "_") for v in variant)
        own = _own_code(fn, tag)
        _CODES[key] = own.__code__
        compiled = _VARIANTS[key] = torch.compile(own, fullgraph=True, dynamic=None)
    return compiled


def run_compiled(fn, variant: tuple, args: tuple, kwargs: dict | None = None,
                 dynamic: tuple[tuple[torch.Tensor, tuple[int, ...]], ...] = ()):
    """fn(*args) through its compiled variant; None if it cannot compile (warned once for that variant).
    `dynamic` lists (tensor, dims) compiled as symbolic sizes from the first call: the batch dimension of
    every tensor argument (it varies with the last batch and validation), else each new size recompiles."""
    compiled = compiled_kernel(fn, variant)
    if compiled is None:
        return None
    for tensor, dims in dynamic:
        for d in dims:
            torch._dynamo.maybe_mark_dynamic(tensor, d)
    try:
        return compiled(*args, **(kwargs or {}))
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a compiler or toolchain error: this variant runs eager from now on
        key = (fn.__module__, fn.__qualname__, *variant)
        cause = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        _FAILURES[key] = cause
        warnings.warn(f"kanvision: torch.compile of KAN kernel {fn.__name__} {variant} failed ({cause}); this "
                      "variant runs the eager kernel from now on (same results, slower). Set KANVISION_COMPILE=0 "
                      "to skip compiling.", RuntimeWarning, stacklevel=4)
        return None


def compile_failures() -> dict[tuple, str]:
    """Kernel variants that could not compile, with the cause (empty while compiling works)."""
    return dict(_FAILURES)


def kernel_graphs() -> dict[tuple, int]:
    """Compiled graphs held per kernel variant in this process (dynamo's cache entries for its code object):
    1 per variant (one more if a batch of 1 row shows up: dynamo specialises sizes 0 and 1)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return {key: len(_debug_get_cache_entry_list(code)) for key, code in _CODES.items()}
