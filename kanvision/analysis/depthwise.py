"""A depthwise convolution whose double backward is cheap: the HVP path for ConvMixer's depthwise convs.

PyTorch differentiates a grouped convolution's backward (`_convolution_double_backward`) one group at a time:
a depthwise conv over 128 channels costs ~128 small convolutions per layer in every Hessian-vector product
(~1,000 per HVP of ConvMixer-128/8). Here the backward is written with ordinary differentiable grouped
convolutions instead, so the second derivative is one first-order backward of those:

- d/dx: the transposed depthwise convolution of the output gradient (`conv_transpose2d`, groups = C);
- d/dw: per channel, the correlation of the input with the output gradient summed over the batch, which is
  one grouped convolution with the batch as the input channels of each group (batch and channel swapped).

Same function, same derivatives (tested against nn.Conv2d to float64 rounding, first and second order).
Only the case ConvMixer uses: groups = in = out channels, stride 1, dilation 1, zero padding.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["depthwise_conv2d", "is_depthwise", "depthwise_hvp_path"]


class _Depthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        # Built from differentiable ops (no once_differentiable): with create_graph=True autograd records them,
        # and the HVP's second pass is their plain first-order backward.
        x, weight = ctx.saved_tensors
        channels, batch = x.shape[1], x.shape[0]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose2d(grad_out, weight, padding=ctx.padding, groups=channels)
        if ctx.needs_input_grad[1]:
            xs = x.transpose(0, 1).reshape(1, channels * batch, *x.shape[2:])
            gs = grad_out.transpose(0, 1).reshape(channels, batch, *grad_out.shape[2:])
            grad_w = F.conv2d(xs, gs, padding=ctx.padding, groups=channels).reshape(weight.shape)
        return grad_x, grad_w, None


def is_depthwise(m: nn.Module) -> bool:
    """A Conv2d this module handles exactly (anything else keeps PyTorch's path)."""
    if not (isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels):
        return False
    if m.stride != (1, 1) or m.dilation != (1, 1) or m.padding_mode != "zeros":
        return False
    return m.padding != "same" or all(k % 2 == 1 for k in m.kernel_size)


def _padding(m: nn.Conv2d) -> tuple[int, int]:
    if m.padding == "same":
        return tuple(k // 2 for k in m.kernel_size)
    if m.padding == "valid":
        return (0, 0)
    return tuple(m.padding)


def depthwise_conv2d(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """m(x) for a depthwise nn.Conv2d (is_depthwise(m)), differentiated by the cheap path above."""
    y = _Depthwise.apply(x, m.weight, _padding(m))
    return y if m.bias is None else y + m.bias.view(1, -1, 1, 1)


@contextmanager
def depthwise_hvp_path(model: nn.Module):
    """Within the block, every depthwise Conv2d of model runs depthwise_conv2d (restored on exit)."""
    swapped = [m for m in model.modules() if is_depthwise(m) and "forward" not in m.__dict__]
    for m in swapped:
        m.forward = partial(depthwise_conv2d, m)
    try:
        yield swapped
    finally:
        for m in swapped:
            del m.forward
