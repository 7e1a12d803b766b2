"""Which device to run on, and waiting for it: shared by the training metrics, analyses and self-checks.

CUDA kernels run asynchronously: a host clock read right after a launch measures the launch, not the work.
Every timing in kanvision therefore synchronizes the device the work was put on (not the "current" CUDA
device, which differs from it for `cuda:1` unless someone called torch.cuda.set_device).
"""
from __future__ import annotations

import torch

__all__ = ["DeviceError", "cpu_name", "default_device", "resolve_device", "synchronize"]


class DeviceError(ValueError):
    """A device that does not exist or is not usable here; the message says which and what to use instead."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(spec: str | torch.device) -> torch.device:
    """`spec` as a torch.device, checked to exist on this machine (DeviceError otherwise)."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {spec!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceError(f"device {spec!r} asked for, but no CUDA device is usable here (torch "
                              f"{torch.__version__}, {built}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {spec!r} asked for, but this machine has {count} CUDA device(s): "
                              f"use cuda:0 .. cuda:{count - 1}")
    elif device.type not in ("cpu", "meta"):
        acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        if acc is None or acc.type != device.type:
            raise DeviceError(f"device {spec!r} is not available here; use --device cpu")
    return device


def synchronize(device: str | torch.device | None) -> None:
    """Wait for all queued work on `device` (a no-op on the CPU, whose ops run synchronously)."""
    if device is None:
        return
    device = torch.device(device)
    if device.type in ("cpu", "meta"):
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        torch.accelerator.synchronize(device)


def cpu_name() -> str | None:
    """The CPU's model name as /proc/cpuinfo gives it (benchmarks name their machine), else None."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None
