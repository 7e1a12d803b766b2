"""Device-resident data (`--data.loader device`): the decoded images live on the training device and each step
gathers and augments its whole batch there, in a few tensor ops, instead of a DataLoader's worker processes
decoding, augmenting and collating image by image (airbench, KellerJordan/cifar10-airbench, keeps CIFAR-10 on
the GPU the same way).

Decoded once, into a uint8 cache file beside the data (<root>/.kanvision-cache/, or ~/.cache/kanvision/ when
that folder is not writable): `<name>.safetensors` holds `images` (N, 3, H, W) uint8 and `labels` (N,) int64,
`<name>.json` the class names, shape and a hash of the source; a hash that no longer matches rebuilds it. The
source hash is, for an image folder, its sorted relative paths with their sizes, modification times and labels,
and the stored size; for torchvision CIFAR the files of the extracted archive (names, sizes, times). An image
folder is stored at the run's img_size, resized by the DataLoader path's own PIL transform, so its batches are
that path's; CIFAR is stored at 32 x 32 and resized on the device for larger models. Synthetic data is made in
memory (float32, from its seed): there is nothing to decode.

Lightning sees ordinary loaders that yield (images, labels): a DataLoader with batch_size=None, no workers, over
a sampler whose items are whole batches of indices (plus each image's crop offsets and flip); its dataset turns
each into images on the device (`DeviceData.materialize`: one gather, crop, flip, normalise), so the batch is
already where Lightning would move it. The loader is iterated in the training process, and Lightning's fetcher
asks for batch k + 1 before step k runs: the gather is queued behind the step on the same stream, no sync.
The loaders also work outside a Trainer (on the CPU, or on the device given), as the workers path's do.

Same data as the workers path: the training order is SeededSampler's (same permutation of (seed, epoch), same
rank shards, same `skip` after a resume), the validation hold-out and every other split are the data module's
own Subsets, mapped to rows of the cache (`base_indices`), and evaluation shards follow EvalShard. The random
crop and flip are drawn on the CPU from (seed, epoch, step, rank) alone (`TrainBatches`), so a resumed epoch
repeats them with no generator state saved.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from kanvision.data.augment import (DEVICE_AUGMENTS, crop_flip, crop_padding, draw_crop_flip, normalize, resize,
                                    to_unit_float)
from kanvision.data.sampling import SeededSampler, sample_seed

__all__ = ["CACHE_VERSION", "FIT_FRACTION", "LOADERS", "DeviceData", "EvalBatches", "TrainBatches", "base_indices",
           "choose_loader", "load_or_build"]

LOADERS = ("auto", "device", "workers")
FIT_FRACTION = 0.25  # auto: device when the decoded splits take at most this share of free memory
CACHE_VERSION = 1
_AUG_SALT = 0x5EED_A116  # the crop/flip streams are not the per-sample streams of the workers path


# ------------------------------------------------------------------------------------ which split, which rows
def base_indices(ds) -> tuple[Dataset, torch.Tensor]:
    """(the dataset under any Subsets, the rows of it that `ds` lists, in `ds`'s order)."""
    if isinstance(ds, Subset):
        inner, rows = base_indices(ds.dataset)
        return inner, rows[torch.as_tensor(ds.indices, dtype=torch.long)]
    return ds, torch.arange(len(ds))


def _split_key(ds) -> str:
    return getattr(ds, "kanvision_split", None) or ("train" if getattr(ds, "train", True) else "test")


def stored_size(ds, img_size: int) -> tuple[int, int, int]:
    """(height, width, bytes per value) of one cached image of dataset `ds`."""
    if hasattr(ds, "data") and hasattr(ds, "targets"):  # torchvision CIFAR: 32 x 32 uint8
        return ds.data.shape[1], ds.data.shape[2], 1
    if hasattr(ds, "noise"):  # SyntheticImages: float32 at its own size
        return ds.noise.shape[-2], ds.noise.shape[-1], 4
    return img_size, img_size, 1


# ------------------------------------------------------------------------------------------- the cache file
def _files_hash(entries) -> str:
    h = hashlib.sha256()
    for entry in entries:
        h.update(json.dumps(entry).encode())
        h.update(b"\n")
    return h.hexdigest()


def source_hash(ds, img_size: int) -> str:
    """What the cached decode depends on (module docstring)."""
    if hasattr(ds, "samples"):  # ImageFolder
        root = Path(ds.root)
        entries = []
        for path, label in sorted(ds.samples):
            st = os.stat(path)
            entries.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns, label])
        return _files_hash([["imagefolder", img_size, list(ds.classes)], *entries])
    base = Path(ds.root) / ds.base_folder  # torchvision CIFAR
    files = sorted(p for p in base.rglob("*") if p.is_file())
    return _files_hash([["cifar", ds.base_folder, bool(ds.train)],
                        *[[str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]])


def _decode(ds, img_size: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, H, W), labels int64) of a torchvision CIFAR or ImageFolder dataset."""
    if hasattr(ds, "data") and hasattr(ds, "targets"):
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets)
    from kanvision.data.transforms import eval_pixels
    plain = copy.copy(ds)
    # The evaluation transform's own resize and crop, then the uint8 pixels its to-tensor would divide by 255:
    # the cache holds exactly what the DataLoader path computes from.
    plain.transform = eval_pixels({"input_size": (3, img_size, img_size)})
    plain.target_transform = None
    loader = DataLoader(plain, batch_size=256, num_workers=workers, shuffle=False)
    xs, ys = zip(*loader) if len(plain) else ((torch.empty(0, 3, img_size, img_size, dtype=torch.uint8),),
                                               (torch.empty(0, dtype=torch.long),))
    return torch.cat(xs), torch.cat(ys).long()


def _cache_dir(preferred: Path) -> Path:
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    where = hashlib.sha256(str(preferred.resolve()).encode()).hexdigest()[:16]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kanvision" / where


def load_or_build(ds, name: str, cache_dir: Path, img_size: int, workers: int = 0) -> dict:
    """{"images", "labels", "classes", "built"} of `ds` from `cache_dir/name.*`, decoded and written first when
    the file is absent or its source hash is not `ds`'s."""
    from safetensors.torch import load_file, save

    from kanvision.train.atomic import atomic_write_bytes, atomic_write_text

    digest = source_hash(ds, img_size)
    cache_dir = _cache_dir(cache_dir)
    tensors, meta = cache_dir / f"{name}.safetensors", cache_dir / f"{name}.json"
    try:
        record = json.loads(meta.read_text())
        if record.get("version") == CACHE_VERSION and record.get("source_hash") == digest and tensors.is_file():
            loaded = load_file(str(tensors))
            return dict(images=loaded["images"], labels=loaded["labels"], classes=record["classes"], built=False)
    except (OSError, ValueError, KeyError):
        pass  # absent, half-written or foreign: decode again
    images, labels = _decode(ds, img_size, workers)
    classes = list(getattr(ds, "classes", []))
    atomic_write_bytes(tensors, save({"images": images.contiguous(), "labels": labels.contiguous()}))
    atomic_write_text(meta, json.dumps(dict(version=CACHE_VERSION, source_hash=digest, classes=classes,
                                            shape=list(images.shape), dtype="uint8", count=len(labels)), indent=1))
    return dict(images=images, labels=labels, classes=classes, built=True)


# --------------------------------------------------------------------------------------------------- samplers
class TrainBatches(SeededSampler):
    """SeededSampler's order (same permutation, shards, epoch and skip), yielded a whole batch at a time: per
    step {"split", "index": the batch's rows of the cache, "dy", "dx", "flip"} (crop and flip only with
    `pad` > 0). The crop and flip of step s come from a generator seeded by (seed, epoch, s, rank) alone.
    `__len__` is the epoch's number of whole batches (the DataLoader's length with batch_size=None)."""

    def __init__(self, rows: torch.Tensor, seed: int, batch_size: int, pad: int = 0, split: str = "train",
                 num_replicas: int = 1, rank: int = 0, epoch: int = 0, skip: int = 0):
        super().__init__(len(rows), seed, num_replicas=num_replicas, rank=rank, epoch=epoch, skip=skip)
        self.rows, self.batch_size, self.pad, self.split = rows, batch_size, pad, split

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)  # SeededSampler's permutation
        order = torch.randperm(self.n, generator=g)
        share = order[self.rank:(self.n // self.num_replicas) * self.num_replicas:self.num_replicas][self.skip:]
        b = self.batch_size
        for k in range(len(share) // b):
            step = self.skip // b + k
            batch = {"split": self.split, "index": self.rows[share[k * b:(k + 1) * b]]}
            if self.pad:
                aug = torch.Generator().manual_seed(sample_seed(self.seed ^ _AUG_SALT, self.epoch,
                                                                step * self.num_replicas + self.rank))
                batch["dy"], batch["dx"], batch["flip"] = draw_crop_flip(aug, b, self.pad)
            yield batch

    def __len__(self) -> int:
        return (self.n // self.num_replicas) // self.batch_size


class EvalBatches(DistributedSampler):
    """An evaluation split's rows in order, this rank's EvalShard share (rows rank, rank + W, ...), in batches
    (the last one short). A DistributedSampler only so that Lightning keeps it under DDP (as EvalShard)."""

    def __init__(self, rows: torch.Tensor, batch_size: int, split: str, num_replicas: int = 1, rank: int = 0):
        self.mine, self.batch_size, self.split = rows[rank::num_replicas], batch_size, split
        self.num_replicas, self.rank, self.epoch, self.shuffle, self.drop_last = num_replicas, rank, 0, False, False

    def __iter__(self):
        for start in range(0, len(self.mine), self.batch_size):
            yield {"split": self.split, "index": self.mine[start:start + self.batch_size]}

    def __len__(self) -> int:
        return -(-len(self.mine) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class _Batches(Dataset):
    """The loader's dataset: each key the sampler yields (a batch of rows) becomes that batch's images."""

    def __init__(self, data: "DeviceData", device: torch.device, n: int):
        self.data, self.device, self.n = data, device, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        return self.data.materialize(key, self.device)


def batch_loader(data: "DeviceData", sampler, device: torch.device, seed: int) -> DataLoader:
    # Its own generator: creating the iterator would otherwise draw from the global one (see data module).
    return DataLoader(_Batches(data, torch.device(device), len(sampler)), batch_size=None, sampler=sampler,
                      num_workers=0, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- choosing
def free_bytes(device: torch.device) -> int:
    """Free memory where the decoded set would live: CUDA's free bytes, or the system's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def choose_loader(requested: str, augment: str, decoded: int, device: torch.device, workers: int,
                  attached: bool = True) -> tuple[str, str]:
    """("device" | "workers", the one line saying which and why). ValueError for device with a recipe it lacks.

    auto without a Trainer (`attached` False: a data module used on its own, for inspection) is workers: there
    is no training device to hold the data on."""
    free = free_bytes(device)
    where = f"{_gb(decoded)} decoded on {device} ({100 * decoded / max(free, 1):.1f}% of its {_gb(free)} free)"
    rule = f"auto picks device when the decoded set is <= {FIT_FRACTION:.0%} of free memory"
    if augment not in DEVICE_AUGMENTS:
        if requested == "device":
            erasing = " + random erasing" if augment == "deit" else ""
            raise ValueError(f"--data.loader device augments {' and '.join(DEVICE_AUGMENTS)} on the device; "
                             f"--data.augment {augment} (RandAugment{erasing}, per image) needs --data.loader workers "
                             "(or auto)")
        why = f"--data.augment {augment} runs RandAugment per image (device augments: {', '.join(DEVICE_AUGMENTS)})"
        return "workers", f"data loader: workers ({workers} processes): {why}"
    if requested == "workers":
        return "workers", f"data loader: workers ({workers} processes), as --data.loader workers asks"
    if requested == "device":
        return "device", f"data loader: device, as --data.loader device asks: {where}"
    if not attached:
        return "workers", (f"data loader: workers ({workers} processes): no Trainer attached (auto holds data on "
                           "a fit's device)")
    if decoded <= FIT_FRACTION * free:
        return "device", f"data loader: device: {where}; {rule}"
    return "workers", f"data loader: workers ({workers} processes): {where}, too large; {rule}"


# --------------------------------------------------------------------------------------------- the batches
class DeviceData:
    """The decoded splits a data module reads (CPU copies, moved to each device on first use) and the step
    that turns a sampler's batch into normalised, augmented images on that device."""

    def __init__(self, img_size: int, augment: str, mean, std, seed: int, cache_dir: Path, workers: int = 0):
        self.img_size, self.seed, self.workers = img_size, seed, workers
        self.cache_dir = Path(cache_dir).expanduser()
        self.pad = crop_padding(img_size) if augment == "cifar" else 0
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self._splits: dict[str, dict] = {}
        self._on: dict[tuple[str, torch.device], tuple[torch.Tensor, ...]] = {}
        self.built: list[str] = []  # cache files written by this run (tests, messages)

    def rows(self, ds) -> tuple[str, torch.Tensor]:
        """(split key, cache rows) of a data-module dataset; decodes (or loads) its split on first use."""
        inner, rows = base_indices(ds)
        key = _split_key(inner)
        if key not in self._splits:
            self._splits[key] = self._load(inner, key)
        return key, rows

    def _load(self, inner, key: str) -> dict:
        if hasattr(inner, "noise"):  # SyntheticImages: its __getitem__, for every index at once
            return dict(images=(inner.prototypes[inner.labels] + inner.noise).clamp(0, 1), labels=inner.labels.long())
        name = (f"imagefolder-{key}-{self.img_size}px" if hasattr(inner, "samples")
                else f"{inner.base_folder}-{key}")
        loaded = load_or_build(inner, name, self.cache_dir, self.img_size, self.workers)
        if loaded["built"]:
            self.built.append(name)
        return loaded

    def train_sampler(self, train_set, batch_size: int, num_replicas: int, rank: int) -> TrainBatches:
        key, rows = self.rows(train_set)
        return TrainBatches(rows, self.seed, batch_size, self.pad, key, num_replicas, rank)

    def eval_loader(self, ds, batch_size: int, device, num_replicas: int, rank: int) -> DataLoader:
        key, rows = self.rows(ds)
        return batch_loader(self, EvalBatches(rows, batch_size, key, num_replicas, rank), device, self.seed)

    def _tensors(self, key: str, device: torch.device):
        if (key, device) not in self._on:
            split = self._splits[key]
            self._on[(key, device)] = (split["images"].to(device), split["labels"].to(device),
                                       self.mean.to(device), self.std.to(device))
        return self._on[(key, device)]

    def materialize(self, batch: dict, device: torch.device) -> list[torch.Tensor]:
        """[images (B, 3, img_size, img_size) float32, labels] on `device` for a sampler's batch."""
        index = batch["index"].to(device, non_blocking=True)
        images, labels, mean, std = self._tensors(batch["split"], device)
        x, y = images[index], labels[index]
        crop = "dy" in batch
        if crop:
            dy, dx, flip = (batch[k].to(device, non_blocking=True) for k in ("dy", "dx", "flip"))
        if crop and x.shape[-1] == self.img_size:  # no resize: crop the stored (uint8) pixels, 1/4 the bytes
            x = to_unit_float(crop_flip(x, dy, dx, flip, self.pad))
        else:
            x = resize(to_unit_float(x), self.img_size)
            if crop:
                x = crop_flip(x, dy, dx, flip, self.pad)
        return [normalize(x, mean, std), y]

    def decoded_bytes(self, datasets) -> int:
        """Bytes the decoded splits under `datasets` take (each split once), before decoding them."""
        seen, total = set(), 0
        for ds in datasets:
            if ds is None:
                continue
            inner, _ = base_indices(ds)
            key = _split_key(inner)
            if key not in seen:
                seen.add(key)
                h, w, itemsize = stored_size(inner, self.img_size)
                total += len(inner) * 3 * h * w * itemsize
        return total
