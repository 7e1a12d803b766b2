"""Learning-rate schedules beyond WarmupCosine (kanvision.train.module), stepped every batch.

`total_steps=None` is filled in by ImageClassifier from the trainer's estimate (any scheduler with that attribute),
so a recipe works for any dataset size, epoch count or device count.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["PiecewiseLinear"]


class PiecewiseLinear(LambdaLR):
    """lr = base lr x the piecewise-linear interpolation of `factors` at `knots` (fractions of the run).

    The default is locuslab/convmixer-cifar10's schedule (train.py, `lr_schedule`): 0 -> lr_max over the first
    2/5 of the run, -> lr_max / 20 at 4/5, -> 0 at the end, evaluated after every batch at (step + 1) / total.
    """

    def __init__(self, optimizer, knots: Sequence[float] = (0.0, 0.4, 0.8, 1.0),
                 factors: Sequence[float] = (0.0, 1.0, 0.05, 0.0), total_steps: int | None = None):
        knots, factors = [float(k) for k in knots], [float(f) for f in factors]
        if len(knots) != len(factors) or len(knots) < 2:
            raise ValueError(f"PiecewiseLinear: knots and factors must be lists of the same length >= 2, got "
                             f"{len(knots)} and {len(factors)}")
        if knots[0] != 0.0 or knots[-1] != 1.0 or any(b <= a for a, b in zip(knots, knots[1:])):
            raise ValueError(f"PiecewiseLinear: knots must increase from 0 to 1 (fractions of the run), got {knots}")
        self.knots, self.factors, self.total_steps = knots, factors, total_steps
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        total = max(1, int(self.total_steps or 1))
        return float(np.interp(min(1.0, (step + 1) / total), self.knots, self.factors))
