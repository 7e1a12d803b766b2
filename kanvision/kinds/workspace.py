"""Scratch buffers for the fast KAN kernels' (N, in, width) feature tensors.

Those tensors live only inside one forward or one backward call, yet they are the largest tensors a KAN
layer touches. On the CPU every fresh tensor above glibc's mmap threshold (32 MB) is newly mapped memory
whose pages fault on first touch: writing the B-spline features of an (8192, 192) input cost 21 ms into a
fresh buffer and 3.7 ms into a reused one on the 2-core test machine. So CPU buffers are kept and reused,
per thread (autograd may run layers from several threads) and per slot (a kernel that needs two at once).
CUDA's caching allocator already reuses memory, so other devices simply get a new tensor.

A scratch tensor is valid until the next `scratch` call for the same slot in the same thread: callers
must consume it before returning, never save it for backward or hand it out. Only eager kernels use them:
inside `torch.compile(model)`, `torch.export` or CUDA graphs the compiler owns every buffer (it may keep an
intermediate for backward, which a shared buffer would corrupt), so traced kernels allocate normally.
"""
from __future__ import annotations

import math
import threading

import torch

__all__ = ["scratch", "release_scratch", "scratch_bytes"]


class _PerThread(threading.local):
    def __init__(self):
        self.buffers: dict[tuple[int, torch.dtype], torch.Tensor] = {}


_LOCAL = _PerThread()


def scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str, slot: int = 0) -> torch.Tensor:
    """An uninitialised tensor of `shape` (contiguous), reusing this thread's CPU buffer for `slot`."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    numel = math.prod(shape)
    # Outside inference mode, so a buffer first made during validation stays writable in training.
    with torch.inference_mode(False):
        key = (slot, dtype)
        buf = _LOCAL.buffers.get(key)
        if buf is None or buf.numel() < numel:
            _LOCAL.buffers.pop(key, None)  # drop the smaller one first: peak is the new size, not both
            buf = _LOCAL.buffers[key] = torch.empty(numel, dtype=dtype)
        return buf[:numel].view(shape)


def release_scratch() -> None:
    """Free this thread's scratch buffers (they otherwise stay as large as the largest layer call)."""
    _LOCAL.buffers.clear()


def scratch_bytes() -> int:
    """Bytes held by this thread's scratch buffers."""
    return sum(b.numel() * b.element_size() for b in _LOCAL.buffers.values())
