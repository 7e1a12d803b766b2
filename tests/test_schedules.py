"""PiecewiseLinear: locuslab/convmixer-cifar10's schedule, value by value."""
import pytest
import torch

from kanvision.train.schedules import PiecewiseLinear


def lrs(total, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    sched = PiecewiseLinear(opt, total_steps=total, **kw)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_convmixer_schedule_at_its_knots():
    # 25 epochs x 4 steps: locuslab evaluates np.interp at epoch + (i + 1) / len(loader), knots at 0, 10, 20, 25.
    got = lrs(100)
    # Construction evaluates step 0: (0 + 1) / 100 of the run, i.e. 1/40 of the way up to lr_max.
    assert got[0] == pytest.approx(0.05 * (1 / 100) / 0.4)
    assert got[39] == pytest.approx(0.05)             # step 39 -> 40/100 = 0.4: the peak
    assert got[79] == pytest.approx(0.05 / 20)        # 0.8: lr_max / 20
    assert got[59] == pytest.approx(0.05 * (1 - 0.5 * 0.95))  # halfway down from 1 to 0.05
    assert got[89] == pytest.approx(0.05 * 0.05 * 0.5)  # 0.9: halfway from lr_max / 20 to 0
    assert got[-1] == 0.0                              # 1.0: the end


def test_bad_knots_are_one_line():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="knots must increase from 0 to 1"):
        PiecewiseLinear(opt, knots=(0.0, 0.5, 0.4, 1.0))
    with pytest.raises(ValueError, match="same length"):
        PiecewiseLinear(opt, knots=(0.0, 1.0), factors=(0.0,))
