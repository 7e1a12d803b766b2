"""GR-KAN, the group-rational KAN of the Kolmogorov-Arnold Transformer (KAT; Yang & Wang, ICLR 2025).

    F_g(x) = (a0 + a1 x + ... + a5 x^5) / (1 + |b_g0||x| + |b_g1||x|^2 + |b_g2||x|^3 + |b_g3||x|^4)

applied elementwise, channel c in group g = c // (C / groups) (8 contiguous groups), as Adamdad/rational_kat_cu's
kernels compute it (the kernels, derivatives and fast paths are in grkan_kernels / grkan_triton). Three modules:

- `GroupRational`: the activation, KAT_Group's parameters (kat_rational/kat_1dgroup_triton.py, `KAT_Group`):
  `weight_numerator` (1, 6), shared by every group (KAT_Group repeats it per group before the kernel), and
  `weight_denominator` (groups, 4): 6 + 4 groups = 38 parameters. `share_numerator=False` is the paper text's
  variant instead (one numerator per group, one shared denominator: `weight_numerator` (groups, 6),
  `weight_denominator` (1, 4)); the authors called that text a typo (Adamdad/kat issue #15): checkpoints follow
  the code, hence the default.
- `GRKANLayer`: one GR-KAN layer, GroupRational(in) then Linear(in, out) (keys `act.*`, `fc.weight`, `fc.bias`):
  the unit that replaces a single linear map (a ConvMixer's pointwise conv).
- `GRKANMlp`: KAT's MLP (Adamdad/kat, katransformer.py, `KAN`), a drop-in for timm.layers.Mlp:
  act1 (identity init) -> drop1 -> fc1 -> act2 (swish or gelu init) -> drop2 -> fc2, with KAT's state-dict keys.

Init: the rationals start from KAT's fitted coefficients (kat_rational/init.json, below); the Linear layers from
nn.Linear's own init, which timm's ViT init then replaces with trunc_normal(std 0.02) and zero bias, as in KAT:
KAT's `init_weights_vit_kan_swish/gelu` draws kaiming_normal for mlp.fc1/fc2 and then overwrites it with
trunc_normal(0.02) (its `if 'qkv' ... else` follows the mlp branch), and KAT_Group has no `init_weights` for
timm's pass to call. So no re-init after the host's pass (Kind.reinit_after_host=False).
"""
from __future__ import annotations

from typing import Callable

import torch
from timm.layers.helpers import to_2tuple
from torch import nn

from kanvision.kinds.grkan_kernels import group_rational
from kanvision.kinds.registry import Kind
from kanvision.kinds.scripting import no_torchscript

__all__ = ["GroupRational", "GRKANLayer", "GRKANMlp", "INIT_COEFFICIENTS", "KIND", "RATIONAL_FLOPS"]

# (a0..a5, b0..b3) per init mode, from Adamdad/rational_kat_cu, kat_rational/init.json ("init_w_numerator",
# "init_w_denominator"; KAT_Group reads them as float32). init.json's fits come from kat_rational/fit.py, whose
# model denominator is 1 + |b0 x + b1 x^2 + b2 x^3 + b3 x^4|, not the kernels' 1 + sum |b_k||x|^(k+1):
# - "swish" (x sigmoid(x)): b0 and b2 are ~1e-6, so both denominators agree: max |F - swish| = 1.2e-6 on [-3, 3].
# - "gelu" (the entry KAT's *_gelu models use, fitted 2024-08-29): b0, b1, b2 < 0, so under the kernels' function
#   it is not GELU: F(3) = 1.53 against 3.00, max deviation 1.46 on [-3, 3] (0.003 under fit.py's denominator).
#   Kept as published, since it is the init KAT's gelu models trained from.
# - "gelu_old" (the earlier entry, renamed when "gelu" was refitted): matches GELU under the kernels' function
#   to 0.0041 on [-3, 3].
INIT_COEFFICIENTS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "identity": ((0.0, 1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),
    "swish": ((3.054879741161051e-07, 0.5000007853744493, 0.24999783422824703, 0.05326628273219478,
               0.005803034571292244, 0.0002751961022402342),
              (-4.111554955950634e-06, 0.10652899335007572, -1.2690007399796238e-06, 0.0005502331264140556)),
    "gelu": ((-0.00153969, 0.51692871, 0.44075827, 0.0972553, -0.00884418, -0.00378675),
             (-0.14171056, -0.06481231, -0.0444695, 0.01283776)),
    "gelu_old": ((-0.0012423594497499122, 0.5080497063245629, 0.41586363182937475, 0.13022718688035761,
                  0.024355900098993424, 0.00290283948155535),
                 (-0.06675015696494944, 0.17927646217001553, 0.03746682605496631, 1.6561610853276082e-10)),
}

# FLOPs of F for one input value, one per add, multiply, divide or abs: |x| 1, P by Horner 5 mul + 5 add,
# Q by Horner 4 mul + 4 add (the |b_k| are per layer, not per value), P / Q 1.
RATIONAL_FLOPS = 1 + 10 + 8 + 1


def _check(owner: str, **values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


def _check_init(owner: str, init) -> None:
    if init != "default":
        raise ValueError(f"{owner}: init must be 'default' (KAT's fitted rationals, nn.Linear's init), got {init!r}")


@no_torchscript
class GroupRational(nn.Module):
    """KAT's group rational activation on channels-last (..., num_features) input (see the module docstring).

    mode: the init ("identity", "swish", "gelu", "gelu_old"; INIT_COEFFICIENTS). compile: None compiles the
    elementwise torch kernels where that works, False keeps them eager. triton: None uses the Triton kernels on
    CUDA, False never. Non-finite inputs give non-finite outputs (never hidden).
    """

    def __init__(self, num_features: int, groups: int = 8, mode: str = "identity", share_numerator: bool = True,
                 compile: bool | None = None, triton: bool | None = None, device=None, dtype=None):
        super().__init__()
        _check("GroupRational", num_features=num_features, groups=groups)
        if num_features % groups:
            raise ValueError(f"GroupRational: groups must divide num_features, got groups={groups} for "
                             f"num_features={num_features}")
        if mode not in INIT_COEFFICIENTS:
            raise ValueError(f"GroupRational: mode must be one of {', '.join(map(repr, INIT_COEFFICIENTS))}, "
                             f"got {mode!r}")
        if not isinstance(share_numerator, bool):
            raise ValueError(f"GroupRational: share_numerator must be True or False, got {share_numerator!r}")
        self.num_features, self.groups, self.mode = num_features, groups, mode
        self.share_numerator = share_numerator
        self.compile = None if compile is None else bool(compile)
        self.triton = None if triton is None else bool(triton)
        rows = (1, groups) if share_numerator else (groups, 1)
        self.weight_numerator = nn.Parameter(torch.empty(rows[0], 6, device=device, dtype=dtype))
        self.weight_denominator = nn.Parameter(torch.empty(rows[1], 4, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every row to the coefficients of `mode` (rounded to the parameter dtype, as KAT's float32 tensors)."""
        if self.weight_numerator.is_meta:
            return
        numerator, denominator = INIT_COEFFICIENTS[self.mode]
        with torch.no_grad():
            for weight, values in ((self.weight_numerator, numerator), (self.weight_denominator, denominator)):
                weight.copy_(torch.tensor(values, dtype=torch.float64).expand_as(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.size(-1) != self.num_features:
            raise ValueError(f"GroupRational: expected input of shape (..., {self.num_features}), got "
                             f"{tuple(x.shape)}")
        y = group_rational(x.reshape(-1, self.num_features), self.weight_numerator, self.weight_denominator,
                           self.groups, self.compile, self.triton)
        return y.view(x.shape)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, groups={self.groups}, mode={self.mode!r}"
                + ("" if self.share_numerator else ", share_numerator=False"))


def _rational_params(groups: int, share_numerator: bool) -> int:
    return 6 + 4 * groups if share_numerator else 6 * groups + 4


class GRKANLayer(nn.Module):
    """One GR-KAN layer: GroupRational(in_features, mode) -> Linear(in_features, out_features).

    Keys: act.weight_numerator, act.weight_denominator, fc.weight, fc.bias. Parameters: 6 + 4 groups (shared
    numerator; 6 groups + 4 otherwise) + in out + out. The Linear keeps nn.Linear's init (that of the 1x1 conv it
    stands for); `init` accepts "default" only.
    """

    basis_flops_per_input = RATIONAL_FLOPS

    def __init__(self, in_features: int, out_features: int, groups: int = 8, mode: str = "swish", bias: bool = True,
                 share_numerator: bool = True, compile: bool | None = None, triton: bool | None = None,
                 init: str = "default", device=None, dtype=None):
        super().__init__()
        _check("GRKANLayer", in_features=in_features, out_features=out_features)
        _check_init("GRKANLayer", init)
        self.in_features, self.out_features = in_features, out_features
        self.act = GroupRational(in_features, groups, mode, share_numerator, compile, triton, device=device,
                                 dtype=dtype)
        self.fc = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        self.act.reset_parameters()
        self.fc.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(x))

    def saved_floats_per_row(self) -> int:
        """Floats autograd keeps per input row: x (the rational's) and F(x) (the Linear's input)."""
        return 2 * self.in_features


class GRKANMlp(nn.Module):
    """KAT's `KAN` MLP as a drop-in for timm.layers.Mlp (accepts every keyword of its constructor).

        act1 (GroupRational, identity init) -> drop1 -> fc1 -> act2 (mode) -> drop2 -> norm -> fc2

    as KAT's forward runs it (dropout after each rational, none after fc2). State-dict keys in KAT's order:
    fc1.weight, fc1.bias, act1.weight_numerator, act1.weight_denominator, act2.weight_numerator,
    act2.weight_denominator, fc2.weight, fc2.bias (norm.* between act1 and act2 when a norm_layer is given).
    Differences from KAT, where KAT's code cannot be followed: `norm_layer` is applied (before fc2, where timm's
    Mlp has it; KAT builds it and never calls it, a dead weight); `use_conv=True` takes (B, C, H, W) and runs the
    same Linear layers on the channel vectors (KAT builds 1x1 Conv2d layers there, but KAT_Group accepts 2-D and
    3-D input only). `act_layer` is accepted and ignored, as in KAT: the activations are the rationals.
    mode: "swish" (KAT-T/S/B, the released checkpoints), "gelu" (the *_gelu variants) or "gelu_old".
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Callable[..., nn.Module] | None = None, norm_layer: Callable[..., nn.Module] | None = None,
                 bias: bool | tuple[bool, bool] = True, drop: float | tuple[float, float] = 0.0,
                 use_conv: bool = False, device=None, dtype=None, *, mode: str = "swish", groups: int = 8,
                 share_numerator: bool = True, compile: bool | None = None, triton: bool | None = None,
                 init: str = "default"):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        _check("GRKANMlp", in_features=in_features, hidden_features=hidden_features, out_features=out_features)
        _check_init("GRKANMlp", init)
        if mode not in INIT_COEFFICIENTS or mode == "identity":
            choices = ", ".join(repr(m) for m in INIT_COEFFICIENTS if m != "identity")
            raise ValueError(f"GRKANMlp: mode must be one of {choices}, got {mode!r}")
        self.in_features, self.hidden_features, self.out_features = in_features, hidden_features, out_features
        factory = dict(device=device, dtype=dtype)
        rational = dict(groups=groups, share_numerator=share_numerator, compile=compile, triton=triton, **factory)
        bias, drop_probs = to_2tuple(bias), to_2tuple(drop)
        # Registration order is KAT's (it fixes the state-dict order): fc1, act1, drop1, norm, act2, fc2, drop2.
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias[0], **factory)
        self.act1 = GroupRational(in_features, mode="identity", **rational)
        self.drop1 = nn.Dropout(drop_probs[0])
        self.norm = norm_layer(hidden_features, **factory) if norm_layer is not None else nn.Identity()
        self.act2 = GroupRational(hidden_features, mode=mode, **rational)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias[1], **factory)
        self.drop2 = nn.Dropout(drop_probs[1])
        self.use_conv = use_conv

    def reset_parameters(self) -> None:
        for module in (self.fc1, self.act1, self.act2, self.fc2):
            module.reset_parameters()
        if hasattr(self.norm, "reset_parameters"):
            self.norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_conv:
            x = x.movedim(1, -1)
        x = self.fc1(self.drop1(self.act1(x)))
        x = self.fc2(self.norm(self.drop2(self.act2(x))))
        return x.movedim(-1, 1) if self.use_conv else x

    @property
    def basis_flops_per_input(self) -> int:
        """Rational FLOPs per value of the MLP's input: both activations, (in + hidden) values per row."""
        return RATIONAL_FLOPS * (self.in_features + self.hidden_features) // self.in_features

    def saved_floats_per_row(self) -> int:
        """x (act1), act1's output (fc1), fc1's output (act2), act2's output (fc2); a norm layer saves its own."""
        return 2 * (self.in_features + self.hidden_features)


def _params(i: int, o: int, kw) -> int:
    rational = _rational_params(int(kw.get("groups", 8)), bool(kw.get("share_numerator", True)))
    return rational + i * o + (o if kw.get("bias", True) else 0)


KIND = Kind(
    name="grkan", layer=GRKANLayer, mlp=GRKANMlp, hidden="mlp",
    title="GR-KAN (KAT group rational)",
    formula="y = W F_g(x) + b,  F_g = (a0 + ... + a5 x^5)/(1 + |b_g0||x| + ... + |b_g3||x|^4),  8 channel groups, "
            "numerator shared",
    source="Adamdad/kat, katransformer.py, KAN; Adamdad/rational_kat_cu, kat_rational/kat_1dgroup_triton.py, "
           "KAT_Group (kernels: kat_rational/rational_triton.py, src/rational_kernel_group.cu)",
    params=_params,
    basis_flops=lambda layer: int(layer.basis_flops_per_input),  # 20 per input value (RATIONAL_FLOPS)
    integer_kwargs=frozenset({"groups"}),
    reinit_after_host=False,  # KAT's Linear layers keep timm's trunc_normal(0.02); see the module docstring
    fused="triton",
    key_markers=(".weight_numerator", ".weight_denominator"),  # KAT_Group's names: act1/act2 (MLP), act (layer)
    memory=lambda layer: layer.saved_floats_per_row(),
)
