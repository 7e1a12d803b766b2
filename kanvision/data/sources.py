"""Where ImageDataModule's images come from: CIFAR-10/100 through torchvision, and image folders
(root/train/<class>/*, root/test/<class>/* or val/). Plain functions of the root, dataset name and sizes; the data
module (kanvision.data.datamodule) holds the state between calls: the per-folder caches passed in here.

`DataError` lives here, not in datamodule, because these functions raise it and datamodule imports them;
datamodule re-exports it, so `from kanvision.data.datamodule import DataError` still works.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from kanvision.data.images import open_rgb, unreadable_reason
from kanvision.models._factory import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

__all__ = ["CIFAR", "IMAGE_FOLDER_SPLITS", "DataError", "cifar", "cifar_present", "cifar_split", "default_stats",
           "fetch_cifar", "folder_classes", "image_folder", "measure_folder_stats", "missing_cifar", "split_folder",
           "unreadable_files"]

CIFAR = {  # torchvision class, folder it unpacks to, archive, stats
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz", CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz", CIFAR100_MEAN, CIFAR100_STD),
}
IMAGE_FOLDER_SPLITS = {"train": ("train",), "test": ("test", "val")}


class DataError(RuntimeError):
    """The requested data is not there (or not usable); the message says where we looked and what to do."""


def default_stats(dataset: str, root: Path, img_size: int, seed: int,
                  unreadable: dict[Path, dict[str, str]] | None = None):
    """The dataset's normalisation (mean, std): CIFAR's table, fixed values for synthetic images, or measured on
    an image folder's training images (`unreadable`: as in `unreadable_files`)."""
    if dataset in CIFAR:
        return CIFAR[dataset][3:]
    if dataset == "synthetic":
        return (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return measure_folder_stats(root, img_size, seed, unreadable=unreadable)


# ---------------------------------------------------------------------------------------------- image folders
def split_folder(root: Path, split: str) -> Path:
    """The folder holding `split` ("train" or "test": test/, else val/) of an image folder data set at root."""
    for name in IMAGE_FOLDER_SPLITS[split]:
        if (root / name).is_dir():
            return root / name
    looked = " or ".join(str(root / n) for n in IMAGE_FOLDER_SPLITS[split])
    raise DataError(f"imagefolder: no {split} images at {looked}. Expected {root}/train/<class>/*.jpg and "
                    f"{root}/test/<class>/*.jpg (or val/); point --data.root at that directory.")


def folder_classes(root: Path) -> list[str]:
    """An image folder's class names: its training split's sub-folders, sorted."""
    return sorted(p.name for p in split_folder(root, "train").iterdir() if p.is_dir())


def image_folder(root: Path, split: str, transform, *, warned_absent: set[Path] | None = None,
                 unreadable: dict[Path, dict[str, str]] | None = None):
    """A torchvision ImageFolder of `split`, labelled by the training classes, without its unreadable files.

    `warned_absent` (folders already warned about missing classes) and `unreadable` (see `unreadable_files`)
    are the caller's caches, so each warning is given once per data module; None: a fresh one for this call.
    """
    from torchvision import datasets
    warned_absent = set() if warned_absent is None else warned_absent
    folder = split_folder(root, split)
    classes = folder_classes(root)
    # Every split is labelled by the training classes: indexing a split by its own folders would score a
    # test class the model never saw as some other class, and a missing folder would shift every label.
    class_to_idx = {c: i for i, c in enumerate(classes)}
    if split != "train":
        here = sorted(p.name for p in folder.iterdir() if p.is_dir())
        unknown = [c for c in here if c not in class_to_idx]
        if unknown:
            raise DataError(f"imagefolder {folder}: class folder(s) {', '.join(unknown)} are not training classes "
                            f"(train has {', '.join(classes)}); the model cannot predict them: remove them "
                            f"from {folder} or add them to {split_folder(root, 'train')}")
        absent = [c for c in classes if c not in here]
        if absent and folder not in warned_absent:
            warned_absent.add(folder)
            from lightning.pytorch.utilities import rank_zero_warn
            rank_zero_warn(f"imagefolder {folder}: no folder for training class(es) {', '.join(absent)}: "
                           f"this split is scored on the other {len(classes) - len(absent)} classes only")
        class_to_idx = {c: i for c, i in class_to_idx.items() if c in here}

    class TrainIndexed(datasets.ImageFolder):
        def find_classes(self, directory):
            return list(classes), dict(class_to_idx)

    try:
        # open_rgb, not torchvision's loader (PIL's convert("RGB")): that turns a 16-bit PNG white and
        # a float image black (kanvision.data.images).
        ds = TrainIndexed(str(folder), transform, loader=open_rgb)
    except FileNotFoundError as e:  # a class folder without images, or no class folders at all
        raise DataError(f"imagefolder {folder}: {e}") from None
    bad = unreadable_files(folder, [p for p, _ in ds.samples], unreadable)
    if bad:
        ds.samples = [(p, t) for p, t in ds.samples if p not in bad]
        ds.imgs, ds.targets = ds.samples, [t for _, t in ds.samples]
        if not ds.samples:
            raise DataError(f"imagefolder {folder}: none of its {len(bad)} image files is readable "
                            f"(e.g. {next(iter(bad))}: {next(iter(bad.values()))})")
    return ds


def unreadable_files(folder: Path, paths: list[str],
                     cache: dict[Path, dict[str, str]] | None = None) -> dict[str, str]:
    """The files of `paths` that cannot be read, each with why, checked once per folder (`cache`: folder -> that
    answer, kept by the caller; None: check now) before training: a bad file found by a worker mid-epoch would
    end the run with a traceback that does not name it, and lose the epoch. Bad files are skipped, with one
    warning."""
    cache = {} if cache is None else cache
    if folder not in cache:
        bad = {p: why for p in paths if (why := unreadable_reason(p)) is not None}
        cache[folder] = bad
        if bad:
            from lightning.pytorch.utilities import rank_zero_warn
            listed = [f"{os.path.relpath(p, folder)} ({why})" for p, why in list(bad.items())[:10]]
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            rank_zero_warn(f"imagefolder {folder}: skipping {len(bad)} unreadable image file(s) of "
                           f"{len(paths)}: {', '.join(listed)}{more}")
    return cache[folder]


def measure_folder_stats(root: Path, img_size: int, seed: int, limit: int = 2000,
                         unreadable: dict[Path, dict[str, str]] | None = None):
    """Per-channel mean and std of up to `limit` training images (a subset seeded by `seed`) at img_size."""
    from torchvision import transforms
    ds = image_folder(root, "train", transforms.Compose(
        [transforms.Resize((img_size, img_size)), transforms.ToTensor()]), unreadable=unreadable)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit]
    x = torch.stack([ds[i][0] for i in idx.tolist()])
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


# ------------------------------------------------------------------------------------------------------ CIFAR
def cifar_present(root: Path, dataset: str) -> bool:
    return (root / CIFAR[dataset][1]).is_dir()


def cifar(root: Path, dataset: str, split: str, transform=None):
    """torchvision's CIFAR-10/100 split at root, never downloading (that is `fetch_cifar`'s)."""
    from torchvision import datasets
    cls = getattr(datasets, CIFAR[dataset][0])
    return cls(str(root), train=split == "train", transform=transform, download=False)


def cifar_split(root: Path, dataset: str, split: str, transform=None):
    """`cifar`, with a DataError that says what to do when the copy at root is absent or unusable."""
    if not cifar_present(root, dataset):
        raise missing_cifar(root, dataset, "prepare_data did not run or could not fetch it")
    try:
        return cifar(root, dataset, split, transform)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise missing_cifar(root, dataset, f"the copy there is unusable ({e})") from None


def missing_cifar(root: Path, dataset: str, reason: str) -> DataError:
    name, folder, archive = dataset.upper().replace("CIFAR", "CIFAR-"), *CIFAR[dataset][1:3]
    return DataError(
        f"{name} not found: looked for {root / folder} (or {root / archive}) and {reason}. "
        f"Either point --data.root at a directory that holds {folder}, or train on image files with "
        f"--data.dataset imagefolder --data.root DIR (DIR/train/<class>/*, DIR/test/<class>/*).")


def fetch_cifar(root: Path, dataset: str, download: bool) -> None:
    """Make sure CIFAR is at root: nothing when it is there, else download both splits (`download`) or say why
    not (DataError)."""
    if cifar_present(root, dataset):
        return
    if not download:
        raise missing_cifar(root, dataset, "download is off (--data.download false)")
    from torchvision import datasets
    cls = getattr(datasets, CIFAR[dataset][0])
    created = [p for p in (root, *root.parents) if not p.exists()]  # deepest first
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # no network, proxy, disk: all mean the same to the user
        # A failed download left an empty ./data (or a partial archive) behind: remove what it created.
        if created:
            (root / CIFAR[dataset][2]).unlink(missing_ok=True)
            for d in created:
                try:
                    d.rmdir()
                except OSError:  # not empty (or not ours after all): keep it
                    break
        raise missing_cifar(root, dataset, f"the download failed ({type(e).__name__}: {str(e)[:120]})") from None
