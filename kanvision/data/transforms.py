"""The evaluation transform: one function for the data module, `kanvision predict` and `kanvision analyze`.

kanvision scores a model on the whole image resized to the model's input size (bilinear, antialiased as PIL and
torchvision resize), no crop, normalized with the training set's mean and std. In timm's terms that is
`timm.data.create_transform(is_training=False)` with crop_pct=1.0 and crop_mode="squash": timm resizes each side
to floor(size / crop_pct) and centre-crops to size, which at crop_pct=1.0 crops nothing.

The pretrained_cfg kanvision writes (models/_factory.py `cifar_cfg`, hub/checkpoints.py `build_config`, the shipped
config.json files) says crop_mode="squash", crop_pct=1.0 and bilinear, so a timm user's own
`create_transform(**resolve_model_data_config(model))` gives this transform. It is still forced here: exports
written before kanvision said "squash" carry timm's default crop_mode="center", under which timm resizes the
*shorter* side to the input size and crops the longer one (the same tensor on a square image, a different one on
a 40x30 image: tests/test_transforms.py shows both), and a plain timm model in `kanvision analyze` has crop_pct
0.95 and bicubic. kanvision's training evaluated the whole image, bilinear, whatever a cfg says.

Input: a PIL image, or a float (C, H, W) tensor in [0, 1] (the synthetic data set's images; timm's MaybeToTensor
passes tensors through and torchvision's Resize resizes them, antialiased).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

__all__ = ["EVAL_POLICY", "eval_data_config", "eval_pixels", "eval_transform"]

# The resize policy of kanvision's evaluation; overrides whatever the model's pretrained_cfg says.
EVAL_POLICY = {"crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bilinear"}


def eval_data_config(model_or_cfg: nn.Module | Mapping[str, Any], *, img_size: int | Sequence[int] | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> dict[str, Any]:
    """timm's data config (input_size, interpolation, mean, std, crop_pct, crop_mode) for kanvision's evaluation.

    `model_or_cfg`: a model (its `pretrained_cfg`, via `timm.data.resolve_model_data_config`) or a pretrained cfg
    dict (via `timm.data.resolve_data_config`). `img_size` (an int or (H, W)), `mean` and `std` override the cfg's.
    """
    from timm.data import resolve_data_config, resolve_model_data_config

    args: dict[str, Any] = dict(EVAL_POLICY)
    if isinstance(model_or_cfg, nn.Module):
        cfg = getattr(model_or_cfg, "pretrained_cfg", None) or {}
    elif isinstance(model_or_cfg, Mapping):
        cfg = model_or_cfg
    else:
        raise ValueError(f"model_or_cfg must be a torch.nn.Module or a pretrained cfg dict, got "
                         f"{type(model_or_cfg).__name__}")
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(int(v) for v in img_size)
        args["input_size"] = (int((cfg.get("input_size") or (3,))[0]), h, w)
    if mean is not None:
        args["mean"] = tuple(float(v) for v in mean)
    if std is not None:
        args["std"] = tuple(float(v) for v in std)
    if isinstance(model_or_cfg, nn.Module):
        return resolve_model_data_config(model_or_cfg, args=args)
    return resolve_data_config(args=args, pretrained_cfg=dict(cfg))


def eval_transform(model_or_cfg: nn.Module | Mapping[str, Any], *, img_size: int | Sequence[int] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """The evaluation transform (PIL image or [0, 1] float tensor -> normalized (C, H, W) float32 tensor):
    `timm.data.create_transform(is_training=False, **eval_data_config(...))`, arguments as `eval_data_config`."""
    from timm.data import create_transform

    return create_transform(**eval_data_config(model_or_cfg, img_size=img_size, mean=mean, std=std),
                            is_training=False)


def eval_pixels(model_or_cfg: nn.Module | Mapping[str, Any], *, img_size: int | Sequence[int] | None = None):
    """The evaluation transform's resize and crop, then the uint8 pixels (PIL image -> uint8 (C, H, W) tensor)
    that `eval_transform` would divide by 255 and normalize; arguments as `eval_data_config`.

    The device loader's decoded cache (kanvision.data.device) is made with it, so the cache holds exactly the
    pixels the DataLoader path computes from. It is timm's same pipeline with `normalize=False`, under which
    create_transform ends in MaybePILToTensor (torchvision's pil_to_tensor, no scaling) instead of MaybeToTensor
    and Normalize: one source for the resize policy, not a copy of it.
    """
    from timm.data import create_transform

    return create_transform(**eval_data_config(model_or_cfg, img_size=img_size), is_training=False, normalize=False)
