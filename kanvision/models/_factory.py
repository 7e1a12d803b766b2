"""What every zoo model shares: the `kan=` options, parameter matching, counting and weight loading.

The options are data (`KanSpec`): each model file turns a spec into the `mlp_layer` its timm class takes,
so no timm class is forked. `match_params` resolves to an MLP spec whose hidden width gives the same
parameter count as a KAN variant; counts come from building the model on the meta device (no memory,
no init), so they are exact whatever the architecture.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
from timm.layers import Mlp
from timm.models import build_model_with_cfg
from torch import nn

from kanvision.kinds import NONE, get_kind, kind_names, kind_of_layer, normalize_kan_kind
from kanvision.kinds.init import check_init
from kanvision.layers import kan_mlp_layer
from kanvision.layers.mlp_init import InitMlp

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "KanSpec", "build_kan_model",
    "checkpoint_filter_fn",
    "count_parameters", "kan_model_cls", "kan_modules", "reset_kan_layers", "with_hidden",
]

# Per-channel statistics of the training splits (torchvision CIFAR, pixel values in [0, 1]).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

# kan_kwargs come from YAML/JSON, so activations may be named instead of passed as classes.
_ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "identity": nn.Identity, "tanh": nn.Tanh}


def _activation(value: Any) -> type[nn.Module]:
    if isinstance(value, str):
        try:
            return _ACTIVATIONS[value.lower()]
        except KeyError:
            raise ValueError(f"kan_kwargs: unknown base_activation {value!r}; use one of {sorted(_ACTIVATIONS)} "
                             "or pass an nn.Module class") from None
    return value


def with_hidden(layer: Callable[..., nn.Module], hidden: int | None) -> Callable[..., nn.Module]:
    """`layer` with its hidden width fixed to `hidden`, whatever width the calling timm block asks for.

    timm blocks derive the width from mlp_ratio; the KAN papers set it directly (DeiT-KAN: 192 at every
    model size), and match_params needs any integer.
    """
    if hidden is None:
        return layer

    @functools.wraps(layer, updated=())
    def build(in_features, hidden_features=None, *args, **kwargs):
        return layer(in_features, hidden, *args, **kwargs)

    return build


def _whole(value, what: str) -> int:
    """value as an int when it is a whole number (3 or 3.0), else ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


# Keywords the zoo itself passes to every layer (not the user's to set through kan_kwargs).
_FACTORY_KEYWORDS = frozenset({"in_features", "out_features", "device", "dtype"})


def _check_keywords(record, kwargs: Mapping[str, Any]) -> None:
    """ValueError naming the kan_kwargs the kind's layer (and its MLP) does not take, with those it does."""
    import inspect

    accepted: set[str] = set()
    for cls in (record.layer, record.mlp):
        if cls is None:
            continue
        params = inspect.signature(cls).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return  # takes anything: the layer checks for itself
        accepted |= {p.name for p in params}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"kan_kwargs: kind {record.name!r} takes no {', '.join(map(repr, unknown))}; its layer "
                         f"takes {', '.join(sorted(accepted - _FACTORY_KEYWORDS))}")


@dataclass(frozen=True)
class KanSpec:
    """What replaces a channel MLP: kind ("none" or a registered kind), hidden width, layer keywords."""

    kind: str = "none"
    hidden: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    match_params: str | None = None  # with kind "none": size the MLP like this KAN kind

    @classmethod
    def from_args(cls, kan=None, kan_hidden=None, kan_kwargs=None, match_params=None) -> "KanSpec":
        kind = normalize_kan_kind(kan)
        if kan_hidden is not None and (_whole(kan_hidden, "kan_hidden") or 0) < 1:
            raise ValueError(f"kan_hidden must be a positive integer, got {kan_hidden!r}")
        if kan_kwargs is not None and not isinstance(kan_kwargs, Mapping):
            raise ValueError(f"kan_kwargs must be a dict of KAN layer keywords, got {type(kan_kwargs).__name__}")
        if match_params is not None:
            target = normalize_kan_kind(match_params)
            if target == NONE or not get_kind(target).match_params:
                able = [k for k in kind_names() if get_kind(k).match_params]
                raise ValueError(f"match_params={match_params!r}: name the KAN kind whose size the MLP should match, "
                                 f"one of {', '.join(map(repr, able))}")
            if kind != "none":
                raise ValueError(f"match_params={match_params!r} sizes an MLP baseline: use it with kan='none', "
                                 f"not kan={kind!r}")
            match_params = target
        elif kind == "none" and (kan_hidden is not None or set(kan_kwargs or {}) - {"init"}):
            # init alone is allowed: the channel MLPs take the same named scheme (layers/mlp_init.py), so a
            # sweep's init axis covers KAN and MLP alike.
            raise ValueError("kan_hidden / kan_kwargs configure KAN layers: set kan= to a KAN kind "
                             f"({', '.join(kind_names())}), or match_params=... for a size-matched MLP; kan='none' "
                             "accepts only kan_kwargs={'init': ...}")
        kwargs = dict(kan_kwargs or {})
        if kind == "none" and "init" in kwargs:
            kwargs["init"] = check_init("kan='none' (channel MLP)", kwargs["init"])
        if kind != NONE:
            record = get_kind(kind)
            _check_keywords(record, kwargs)
            for key in record.integer_kwargs & kwargs.keys():
                kwargs[key] = _whole(kwargs[key], f"kan_kwargs {key}")
            for key in record.activation_kwargs & kwargs.keys():
                kwargs[key] = _activation(kwargs[key])
        return cls(kind, None if kan_hidden is None else int(kan_hidden), kwargs, match_params)

    @property
    def is_kan(self) -> bool:
        return self.kind != "none"

    def layer_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.kwargs)
        record = get_kind(self.kind)
        if record.act_keyword and record.act_default is not None:
            # The published activation (B-spline: efficient-kan's SiLU base branch), not the host block's GELU.
            kwargs.setdefault(record.act_keyword, record.act_default)
        return kwargs

    def mlp_layer(self, default_hidden: int | None = None) -> Callable[..., nn.Module]:
        """The `mlp_layer` callable for a timm block (hidden width fixed unless neither is given)."""
        hidden = self.hidden
        if hidden is None and not (self.is_kan and get_kind(self.kind).hidden == "mlp"):
            hidden = default_hidden  # "mlp" kinds (GR-KAN) keep the host block's own MLP width
        if self.is_kan:
            layer = kan_mlp_layer(self.kind, **self.layer_kwargs())
        elif self.kwargs.get("init", "default") != "default":
            layer = functools.partial(InitMlp, init=self.kwargs["init"])
        else:
            layer = Mlp
        return with_hidden(layer, hidden)

    def single_layer(self, in_features: int, out_features: int, **factory) -> nn.Module:
        """One KAN layer (ConvMixer's pointwise conv is a single linear map, not an MLP)."""
        return get_kind(self.kind).build(in_features, out_features, **self.layer_kwargs(), **factory)

    def resolve(self, count: Callable[["KanSpec"], int]) -> "KanSpec":
        """Turn match_params into an MLP hidden width; `count(spec)` is the model's trainable count."""
        if self.match_params is None:
            return self
        kan = replace(self, kind=self.match_params, match_params=None)
        target = count(kan)
        # Parameter count is affine in the hidden width of the MLPs: two probes give slope and offset.
        c1, c2 = (count(KanSpec("none", h)) for h in (1, 2))
        slope = c2 - c1
        hidden = max(1, round((target - c1) / slope) + 1)
        got = count(KanSpec("none", hidden))
        if abs(got - target) > 0.01 * target:
            raise ValueError(f"match_params={self.match_params!r}: no MLP hidden width reaches the KAN's "
                             f"{target:,} parameters within 1% (closest: hidden={hidden}, {got:,})")
        # The matched MLP keeps an init= choice (its only keyword a kan='none' spec accepts).
        return KanSpec("none", hidden, {k: v for k, v in self.kwargs.items() if k == "init"})


def count_on_meta(build: Callable[[], nn.Module]) -> int:
    """Trainable parameters of the model `build()` makes, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def kan_modules(model: nn.Module) -> list[nn.Module]:
    """Every KAN layer of the model (a layer of a registered kind), in module order."""
    return [m for m in model.modules() if kind_of_layer(m) is not None]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total, trainable and in-KAN-layer parameter counts (each parameter counted once)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kan = sum(p.numel() for m in kan_modules(model) for p in m.parameters())
    return dict(total=total, trainable=trainable, kan=kan)


def reset_kan_layers(model: nn.Module) -> nn.Module:
    """Give KAN layers back their own init after the host model's init pass.

    timm's ViT init puts trunc_normal(0.02) on every nn.Linear it finds, e.g. RSWAF's `spline_linear`, whose
    published init is xavier-uniform: kinds whose record says `reinit_after_host` are re-initialised. The others
    keep their construction-time init: their weights are plain Parameters that timm's passes (nn.Linear / Conv /
    norm modules, `init_weights` hooks) do not visit (B-spline: not fitted a second time), or the published model
    itself gives its Linear layers timm's init (GR-KAN in KAT).
    """
    for module in kan_modules(model):
        if kind_of_layer(module).reinit_after_host:
            module.reset_parameters()
    for module in model.modules():  # MLPs given an init= choice: timm's pass overwrote it too
        if isinstance(module, InitMlp):
            module.reset_parameters()
    return model


def kan_model_cls(cls: Callable[..., nn.Module], post: Callable[[nn.Module], nn.Module] | None = None):
    """`cls` for build_model_with_cfg, with KAN init restored (and `post` applied) before weights load.

    timm loads pretrained files inside build_model_with_cfg right after construction; re-initialising the KAN
    layers after that would overwrite the loaded weights.
    """
    def make(**kwargs) -> nn.Module:
        model = cls(**kwargs)
        return reset_kan_layers(post(model) if post is not None else model)

    make.__name__ = getattr(cls, "__name__", "model")
    return make


def build_kan_model(cls, variant: str, pretrained: bool, spec: KanSpec, kwargs: dict[str, Any], *,
                    layer_kwargs: Callable[[KanSpec], dict[str, Any]] = lambda s: {},
                    post: Callable[..., nn.Module] | None = None, filter_fn: Callable | None = None) -> nn.Module:
    """timm's build_model_with_cfg for `cls` with what `spec` asks: `layer_kwargs(spec)` (e.g. mlp_layer=...)
    go to the constructor, `post(model, spec=spec)` edits the built model; match_params is resolved first
    by counting candidate models on the meta device."""
    feature_cfg = dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter")

    def build(s: KanSpec, pretrained: bool = False) -> nn.Module:
        make = kan_model_cls(cls, post=None if post is None else functools.partial(post, spec=s))
        return build_model_with_cfg(make, variant, pretrained, pretrained_filter_fn=filter_fn or checkpoint_filter_fn,
                                    feature_cfg=feature_cfg, **kwargs, **layer_kwargs(s))

    spec = spec.resolve(lambda s: count_on_meta(functools.partial(build, s)))
    return build(spec, pretrained)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain timm keys from a Lightning checkpoint, DDP or torch.compile wrapped state dict (for timm loading)."""
    from kanvision.hub.checkpoints import strip_prefixes

    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    return strip_prefixes(state_dict)


def cifar_cfg(num_classes: int = 10, img_size: int = 32, **kwargs) -> dict[str, Any]:
    """Pretrained cfg for models trained from scratch on CIFAR (no hub weights; load files with timm's overlay)."""
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if num_classes == 100 else (CIFAR10_MEAN, CIFAR10_STD)
    cfg = dict(url="", num_classes=num_classes, input_size=(3, img_size, img_size), pool_size=None,
               crop_pct=1.0, crop_mode="squash", interpolation="bilinear", mean=mean, std=std,
               license="apache-2.0", paper_ids="arXiv:2404.19756")
    cfg.update(kwargs)
    return cfg
