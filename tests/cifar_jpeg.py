"""The project's CIFAR-10 JPEG archive (`../shared/data/cifar10-jpeg.tar.gz`, image-folder layout), read
straight from the tarball: a fixed few hundred test images re-score the shipped weights on a fresh clone
without unpacking 60,000 files.

The archive holds `test/<class>/NNNN.jpg`, classes in CIFAR-10's label order; JPEG re-encoding makes its
pixels differ slightly from the official CIFAR-10 (numbers on it are not official CIFAR-10 numbers).
"""
from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path

import torch

__all__ = ["ARCHIVE_ENV", "CLASSES", "default_archive", "score_test_subset", "fixed_test_subset"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARCHIVE_ENV = "KANVISION_CIFAR10_JPEG"


def default_archive() -> Path | None:
    """$KANVISION_CIFAR10_JPEG, else ../shared/data/cifar10-jpeg.tar.gz beside the checkout, if present."""
    if os.environ.get(ARCHIVE_ENV):
        return Path(os.environ[ARCHIVE_ENV]).expanduser()
    here = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    return here if here.is_file() else None


@functools.lru_cache(maxsize=2)  # one pass over the gzip stream takes seconds; the tests ask more than once
def fixed_test_subset(archive: str | os.PathLike, per_class: int = 50) -> tuple[tuple, tuple, tuple]:
    """The first `per_class` test images of each class (test/<class>/0000.jpg ...), as RGB PIL images, their
    labels and member names, in class order."""
    from PIL import Image

    wanted = {f"test/{c}/{i:04d}.jpg": k for k, c in enumerate(CLASSES) for i in range(per_class)}
    found: dict[str, tuple] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # one pass: the gzip stream cannot seek
            name = member.name[2:] if member.name.startswith("./") else member.name
            if name in wanted:
                img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                found[name] = (img, wanted[name])
                if len(found) == len(wanted):
                    break
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise FileNotFoundError(f"{archive}: {len(missing)} expected test images are missing (e.g. {missing[0]})")
    names = sorted(found, key=lambda n: (wanted[n], n))
    return tuple(found[n][0] for n in names), tuple(found[n][1] for n in names), tuple(names)


@torch.no_grad()
def score_test_subset(model: torch.nn.Module, archive: str | os.PathLike, per_class: int = 50,
                      batch_size: int = 100) -> dict:
    """Correct top-1 / top-5 counts of `model` (eval mode, CPU float32) on the fixed test subset, with the
    evaluation transform training used: resize to the model's input size, to tensor, normalise with the
    model's pretrained_cfg mean/std."""
    from torchvision import transforms as T

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = tuple(cfg.get("input_size", (3, 32, 32))[1:])
    tf = T.Compose([T.Resize(size, antialias=True), T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])])
    images, labels, _ = fixed_test_subset(Path(archive), per_class)
    model = model.eval()
    top1 = top5 = 0
    for i in range(0, len(images), batch_size):
        x = torch.stack([tf(img) for img in images[i:i + batch_size]])
        y = torch.tensor(labels[i:i + batch_size])
        best = model(x).topk(5, dim=-1).indices
        top1 += int((best[:, 0] == y).sum())
        top5 += int((best == y[:, None]).any(dim=-1).sum())
    return {"images": len(images), "top1_correct": top1, "top5_correct": top5}
