"""The channel MLP of a `kan="none"` model with one of the KAN layers' `init=` choices.

The training-scheme study (arXiv:2411.05296) crosses initializations with optimizers and learning rates for
KANs *and* the MLPs they replace; with `kan_kwargs={"init": name}` on a `kan="none"` model, the channel MLPs
(the layers `kan=` would swap) get the same named scheme, so one grid axis covers both kinds. Only the two
linear weights change; biases keep the host model's init (timm's Mixer: ~0).

- kaiming_normal / kaiming_uniform / orthogonal: the draw the KAN base weight gets
  (`kan_init.study_draw(name, (out, in), a=sqrt(5))`: torch's call as nn.Linear and efficient-kan make it).
- lecun: N(0, 1 / fan_in); glorot: N(0, 2 / (fan_in + fan_out)). For an MLP these are the classical
  schemes that arXiv:2509.03417 generalises to splines (one term per edge instead of G + k + 1).
- default: timm's own init; the factory builds a plain timm Mlp then, so nothing changes.
"""
from __future__ import annotations

import math

import torch
from timm.layers import Mlp

from kanvision.kinds.init import STUDY_INITS, check_init, normal, study_draw, variance_preserving_std

__all__ = ["InitMlp"]


class InitMlp(Mlp):
    """timm's Mlp whose fc1/fc2 weights follow `init`; `reset_parameters()` redraws them (float64 on the
    CPU, then cast, so a seed gives the same weights on every device)."""

    def __init__(self, *args, init: str = "default", **kwargs):
        super().__init__(*args, **kwargs)
        self.init = check_init("InitMlp", init)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.init == "default":
            return
        for fc in (self.fc1, self.fc2):
            w = fc.weight
            if w.is_meta:
                continue
            shape = (w.shape[0], int(w[0].numel()))  # a 1x1 conv (use_conv) is a linear map of its in-channels
            fan_out, fan_in = shape
            if self.init in STUDY_INITS:
                new = study_draw(self.init, shape, a=math.sqrt(5))
            else:  # lecun / glorot: a linear edge is one term whose "basis" is x itself (E[x^2] = E[1^2] = 1)
                new = normal(shape, variance_preserving_std(self.init, fan_in, fan_out, 1, 1.0, 1.0, 1.0))
            w.copy_(new.reshape(w.shape))
