"""Batched augmentation on the training device: a whole batch is cropped, flipped, resized and normalised in a
few tensor ops, with per-image random parameters drawn beforehand (kanvision.data.device draws them on the CPU
from (seed, epoch, step), so they need no generator state of their own and a resumed epoch repeats them).

Each op is written to give the values of the torchvision transform the DataLoader path runs on one image:

- `crop_flip`: T.RandomCrop(size, padding=p) (zero fill, `padding_mode="constant"`, offsets drawn in
  [0, 2p] as `RandomCrop.get_params` does) followed by T.RandomHorizontalFlip, as one gather from the
  zero-padded batch: output pixel (r, c) of image b reads padded pixel (dy_b + r, dx_b + c), or column
  dx_b + (W - 1 - c) when the image is flipped. Pixels move, none is computed, so the result equals the
  per-image transform bit for bit (tests/test_device_loader.py compares them).
- `to_unit_float`: T.ToTensor's uint8 -> float32 (`x.float().div(255)`); float images (synthetic) pass.
- `normalize`: T.Normalize's `x.sub_(mean).div_(std)`, mean and std float32 tensors shaped (1, C, 1, 1).
- `resize`: T.Resize((size, size), antialias=True) on a tensor: torch.nn.functional.interpolate, bilinear,
  align_corners=False, antialias=True (what torchvision runs for tensor images). The DataLoader path resizes
  PIL images instead (PIL's bilinear filter on 8-bit values), so a resized batch matches it to about one
  grey level, not bit for bit.

RandAugment and random erasing (augment=deit, augment=convmixer) have no batched version here: those recipes
need `--data.loader workers` (DEVICE_AUGMENTS lists what runs on the device).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DEVICE_AUGMENTS", "crop_flip", "crop_padding", "draw_crop_flip", "normalize", "resize", "to_unit_float"]

DEVICE_AUGMENTS = ("cifar", "none")


def crop_padding(img_size: int) -> int:
    """The workers path's crop padding for augment=cifar: img_size / 8 (4 for 32-pixel images), at least 1."""
    return max(1, img_size // 8)


def draw_crop_flip(generator: torch.Generator, batch: int, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dy, dx, flip) for `batch` images: offsets uniform in [0, 2 pad] (RandomCrop.get_params on a padded image),
    flip with probability 1/2 (RandomHorizontalFlip), all drawn from `generator` in this order."""
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    return dy, dx, flip


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch `x` (B, C, H, W) at offsets (dy, dx) in [0, 2 pad], each
    image flipped left-right where `flip`; same shape and dtype as `x`."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # zeros: RandomCrop's default fill
    wp = w + 2 * pad
    rows = dy.view(b, 1) + torch.arange(h, device=x.device)
    cols_plain = torch.arange(w, device=x.device)
    cols = dx.view(b, 1) + torch.where(flip.view(b, 1), (w - 1) - cols_plain, cols_plain)
    where = (rows.view(b, h, 1) * wp + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, where).view(b, c, h, w)


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images as float32 in [0, 1] (T.ToTensor's arithmetic); float images unchanged."""
    return x.float().div(255) if x.dtype == torch.uint8 else x


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float images to size x size as T.Resize((size, size), antialias=True) does on tensors."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """T.Normalize on a batch: (x - mean) / std with (1, C, 1, 1) float32 statistics, in place on `x`."""
    return x.sub_(mean).div_(std)
