"""How the kinds' elementwise kernels run: plain ops where a tracer is in charge, compiled into a reused scratch
buffer where the layer compiles, eager otherwise. Shared by FastKAN, ChebyKAN and KAGN."""
from __future__ import annotations

import torch

from kanvision.kinds.compile import run_compiled, use_compiled
from kanvision.kinds.workspace import scratch

__all__ = ["math_dtype", "scratch_kernel"]


def math_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype computes its basis in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def scratch_kernel(fn, tag: str, args: tuple, out_shape, out_dtype, compile, variant: tuple = ()):
    """fn(*args): plain ops inside torch.compile(model) / export / meta; compiled into scratch slot 1 when the
    layer compiles; eager otherwise. The scratch result is valid until the next kernel call: consume it at once."""
    lead = args[0]
    if torch.compiler.is_compiling() or lead.device.type == "meta":
        return fn(*args)
    if use_compiled(compile, lead.device):
        # No autograd inside; requires_grad differs between passes and would recompile.
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        out = scratch(out_shape, out_dtype, lead.device, slot=1)
        key = (tag, *variant, lead.dtype, out_dtype, lead.device.type, torch.is_inference_mode_enabled())
        dyn = tuple((a, (0,)) for a in (*args, out) if isinstance(a, torch.Tensor) and a.dim() >= 2)
        result = run_compiled(fn, key, args, {"out": out}, dyn)
        if result is not None:
            return result
    return fn(*args)
