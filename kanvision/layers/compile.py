"""torch.compile for the fast KAN kernels, with one warning and the eager kernel when compiling fails."""
from __future__ import annotations

import warnings

import torch

__all__ = ["compiled_or_eager", "compile_failures"]

_COMPILED: dict[str, object] = {}
_FAILURES: list[str] = []


def compile_failures() -> list[str]:
    """The compiler error that switched this process to the eager kernels (empty while compiling works)."""
    return list(_FAILURES)


def compiled_or_eager(name: str, fn, eager_call, *args, **kwargs):
    """Run torch.compile(fn)(*args); on any compiler failure warn once per process and run `eager_call`."""
    if not _FAILURES:
        try:
            if name not in _COMPILED:
                _COMPILED[name] = torch.compile(fn, fullgraph=True, dynamic=None)
            return _COMPILED[name](*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler/toolchain error means: use eager
            _FAILURES.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            warnings.warn(f"kanvision: torch.compile of the fast KAN kernels failed ({_FAILURES[0]}); "
                          "using the eager fast path instead (same results, slower).", RuntimeWarning,
                          stacklevel=3)
    return eager_call()
