"""kanvision.analysis.depthwise: the HVP path for depthwise convs is the same function with the same first
and second derivatives as nn.Conv2d, and HessianOperator uses it without changing H v."""
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import kanvision  # noqa: F401  (registers the zoo)
from kanvision.analysis import depthwise as D
from kanvision.analysis.depthwise import _Depthwise, _padding, depthwise_conv2d, depthwise_hvp_path, is_depthwise
from kanvision.analysis.hessian import HessianOperator


def _second_order(f, x, w, v, u):
    """(d/dx, d/dw) of <grad of <f(x, w), v>, u>: one Hessian-vector product of the bilinear test loss."""
    g = torch.autograd.grad((f(x, w) * v).sum(), (x, w), create_graph=True)
    return torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, u)), (x, w))


@pytest.mark.parametrize("kernel,padding,bias", [(5, "same", True), (3, 1, False), (3, 0, True), ((3, 5), "same", True)])
def test_same_values_and_derivatives_as_conv2d(kernel, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, kernel, padding=padding, groups=4, bias=bias).double()
    assert is_depthwise(conv)
    x = torch.randn(3, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    ref = conv(x)
    torch.testing.assert_close(depthwise_conv2d(conv, x), ref, rtol=1e-12, atol=1e-12)
    w = conv.weight.detach().clone().requires_grad_()
    theirs = lambda x, w: F.conv2d(x, w, padding=padding, groups=4)  # noqa: E731
    ours = lambda x, w: _Depthwise.apply(x, w, _padding(conv))  # noqa: E731
    v = torch.randn_like(ref)
    u = (torch.randn_like(x), torch.randn_like(w))
    for a, b in zip(_second_order(ours, x, w, v, u), _second_order(theirs, x, w, v, u)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_derivatives_against_finite_differences():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    ours = lambda x, w: _Depthwise.apply(x, w, (1, 1))  # noqa: E731
    assert torch.autograd.gradcheck(ours, (x, w)) and torch.autograd.gradgradcheck(ours, (x, w))


def test_only_plain_depthwise_convs_are_taken():
    assert not is_depthwise(nn.Conv2d(4, 4, 3, stride=2, groups=4))
    assert not is_depthwise(nn.Conv2d(4, 8, 3, groups=4))  # channel multiplier
    assert not is_depthwise(nn.Conv2d(4, 4, 3, groups=2))
    assert not is_depthwise(nn.Conv2d(4, 4, 3, groups=4, padding_mode="reflect"))
    assert not is_depthwise(nn.Conv2d(4, 4, 3))


@pytest.mark.slow
def test_hessian_operator_takes_the_path_and_keeps_h_v(monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model("kan_convmixer_128_8_p4", kan="bspline", dim=8, depth=2, num_classes=3).double()
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 3, (6,))
    op = HessianOperator(model, [(x, y)])
    v = torch.randn(op.size, dtype=torch.float64)
    # Reference: plain double backward through PyTorch's own conv (and the layers' default paths).
    params = op.params
    loss = torch.nn.functional.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, params, create_graph=True)
    chunks = torch.split(v, [p.numel() for p in params])
    dot = sum((a * c.view_as(a)).sum() for a, c in zip(g, chunks))
    want = torch.cat([h.reshape(-1) for h in torch.autograd.grad(dot, params)])
    calls = []
    monkeypatch.setattr(D, "depthwise_conv2d", lambda m, x: calls.append(m) or depthwise_conv2d(m, x))
    got = op.matvec(v)
    assert len(calls) == 2  # both blocks' depthwise convs went through the HVP path
    torch.testing.assert_close(got.double(), want, rtol=1e-9, atol=1e-11)
    with depthwise_hvp_path(model) as swapped:
        assert len(swapped) == 2
    assert all("forward" not in m.__dict__ for m in model.modules())  # restored
