"""How the kinds' custom kernels meet autocast: they decide the compute dtype once (autocast's, when it is on, for
float32 and low-precision inputs; float64 stays float64), switch autocast off inside and cast explicitly, so
every kernel runs the same arithmetic on every device. Shared by every kind's fast path."""
from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["AUTOCAST_DEVICES", "autocast_dtype", "no_autocast"]

AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matmul runs in: autocast's for float32/low-precision inputs when it is on, else x's."""
    dev = x.device.type
    if dev in AUTOCAST_DEVICES and torch.is_autocast_enabled(dev) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(dev)
    return x.dtype


def no_autocast(device_type: str):
    """Autocast off inside the kernels (their casts are explicit); devices without autocast (meta) need nothing."""
    return torch.autocast(device_type, enabled=False) if device_type in AUTOCAST_DEVICES else nullcontext()
