"""`kanvision predict CHECKPOINT IMAGE [IMAGE ...]`: top-k classes of image files.

CHECKPOINT is an export directory (`kanvision export`), a model.safetensors beside its config.json, a
kanvision Lightning .ckpt, or a pretrained tag such as kan_mixer_tiny_p4_32.cifar10_bspline (the shipped
weights in checkpoints/ or $KANVISION_CHECKPOINTS; an existing path of the same spelling wins). Each image
is resized to the checkpoint's input size (whole image, no crop, as kanvision evaluates) and normalized with
the checkpoint's mean/std. An unreadable image is reported by name and skipped; the others are still
classified (exit status 1 if any image failed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from kanvision.data.images import ImageModeError, open_rgb
from kanvision.data.transforms import eval_transform
from kanvision.device import DeviceError, default_device, resolve_device
from kanvision.hub.checkpoints import CheckpointError
from kanvision.hub.pretrained import load

__all__ = ["load_image", "main", "predict_images"]


def load_image(path: str | Path, model: nn.Module, transform=None) -> torch.Tensor:
    """(3, H, W) float tensor for `model`: RGB, resized to its input size, normalized with its mean/std
    (kanvision.data.transforms.eval_transform(model), or `transform` when given: build it once per batch)."""
    # As the image-folder training data is read: 16-bit and float images by their value range, transparent
    # pixels on white, modes without one meaning refused (kanvision.data.images).
    img = open_rgb(path)
    return (transform or eval_transform(model))(img)


@torch.inference_mode()
def predict_images(model: nn.Module, paths: list[str], topk: int = 5, batch_size: int = 64):
    """([{"image", "top": [{"class", "index", "prob"}...]}...], [(path, error message)...])."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    names = getattr(model, "class_names", None) or model.pretrained_cfg.get("label_names")
    device = next(model.parameters()).device
    k = min(topk, model.pretrained_cfg.get("num_classes") or topk)
    results, errors, batch = [], [], []
    transform = eval_transform(model)

    def flush():
        if not batch:
            return
        probs = model(torch.stack([t for _, t in batch]).to(device)).float().softmax(-1)
        values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
        for (path, _), v, i in zip(batch, values.tolist(), indices.tolist()):
            top = [{"class": names[j] if names else f"class_{j}", "index": j, "prob": p} for p, j in zip(v, i)]
            results.append({"image": path, "top": top})
        batch.clear()

    for path in paths:
        try:
            batch.append((path, load_image(path, model, transform)))
        except FileNotFoundError:
            errors.append((path, "no such file"))
        except ImageModeError as e:  # its message names the file and says why
            errors.append((path, str(e).removeprefix(f"{path}: ")))
        except Exception as e:  # PIL's UnidentifiedImageError, truncated files, directories...
            errors.append((path, f"cannot read image ({type(e).__name__}: {e})"))
        if len(batch) >= batch_size:
            flush()
    flush()
    return results, errors


def _table(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(r["image"])
        lines += [f"  {n}. {t['class']:<20} {100 * t['prob']:6.2f}%" for n, t in enumerate(r["top"], 1)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kanvision predict", description=__doc__.split("\n\n")[1])
    parser.add_argument("checkpoint", help="export dir, model.safetensors (with config.json), .ckpt, or a "
                                           "pretrained tag (timm.list_pretrained('kan_*'))")
    parser.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: cuda if available)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.topk < 1:  # 0 printed image names without classes and exited 0; -1 was a traceback
        print(f"kanvision predict: error: --topk must be 1 or more (the number of classes to list), got {args.topk}",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        device = resolve_device(args.device or default_device())
        model = load(args.checkpoint, device=device)
    except (CheckpointError, DeviceError) as e:
        print(f"kanvision predict: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    results, errors = predict_images(model, args.images, topk=args.topk)
    for path, message in errors:
        print(f"kanvision predict: {path}: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "results": results,
                          "errors": [{"image": p, "error": m} for p, m in errors]}, indent=2))
    elif results:
        print(_table(results))
    if errors:
        raise SystemExit(1)
    return 0
