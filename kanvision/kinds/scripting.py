"""How KAN layers meet PyTorch's tracers other than torch.compile.

- FX (`torch.fx.symbolic_trace`, timm's feature extraction): a KAN layer checks its input shape in Python
  and dispatches on device and compile state, which symbolic proxies cannot answer. timm's
  `register_notrace_module` makes the layer a leaf: FX records one call to it and traces around it.
- TorchScript cannot compile the layers' custom autograd kernels. Rather than failing deep inside the
  script compiler, scripting a model that holds one stops with a message naming what works instead.
"""
from __future__ import annotations

from timm.layers import register_notrace_module

__all__ = ["TorchScriptUnsupported", "no_torchscript"]


class TorchScriptUnsupported(RuntimeError):
    """torch.jit.script met a KAN layer."""


def no_torchscript(cls):
    """Class decorator: FX leaf module, and a clear error from torch.jit.script."""

    def __prepare_scriptable__(self):
        raise TorchScriptUnsupported(
            f"TorchScript cannot compile {type(self).__name__} (custom autograd kernels): use torch.compile(model) "
            "for speed, or torch.export.export(model.eval(), (example_input,)) for a deployable graph")

    cls.__prepare_scriptable__ = __prepare_scriptable__
    return register_notrace_module(cls)
