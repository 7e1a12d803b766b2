"""ImageDataModule: CIFAR-10/100 (torchvision), image folders, and synthetic images for tests.

`batch_size` is the global batch: each of N devices gets batch_size / N, so a config means the same run
on one CPU or eight GPUs. `num_classes`, `class_names`, `mean` and `std` are known before `setup` (the CLI
links num_classes into the model), except an image folder's mean/std, measured in `setup` when not given.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from kanvision.data.sampling import SeededAugment, SeededSampler
# The data sets themselves (kanvision.data.sources). DataError, CIFAR and IMAGE_FOLDER_SPLITS were defined here
# before that module existed and are still imported from here: keep them in this import.
from kanvision.data.sources import (CIFAR, IMAGE_FOLDER_SPLITS, DataError, cifar, cifar_present, cifar_split,
                                    default_stats, fetch_cifar, folder_classes, image_folder)
from kanvision.data.synthetic import SyntheticImages

__all__ = ["DataError", "ImageDataModule", "SyntheticImages"]

DATASETS = ("cifar10", "cifar100", "imagefolder", "synthetic")
AUGMENTS = ("cifar", "deit", "convmixer", "none")


class ImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: str = "cifar10",
        root: str = "data",
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 2,
        img_size: int = 32,
        augment: str = "cifar",
        val_split: int | float | None = None,
        train_subset: int | None = None,
        test_subset: int | None = None,
        train_eval_size: int = 2000,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        synthetic_size: int = 512,
        synthetic_classes: int = 10,
        seed: int = 0,
        loader: str = "auto",
        cache_dir: str | None = None,
    ):
        """
        Args:
            dataset: cifar10 | cifar100 | imagefolder (root/train/<class>/*, root/test/<class>/* or val/) | synthetic.
            root: where the data is (CIFAR: the folder holding cifar-10-batches-py or its archive).
            download: CIFAR only: download into root when absent (done once, in prepare_data).
            batch_size: global batch, split evenly across devices.
            img_size: images are resized to img_size x img_size (224 for the patch16_224 models).
            augment: cifar (random crop, padding img_size/8, + flip) | deit (timm: RandAugment, random erasing) |
                convmixer (flip + torchvision RandAugment(2, 12), locuslab/convmixer-cifar10's recipe) | none.
            val_split: training images held out (seeded by `seed`) for validation and model selection: a count
                (5000) or a fraction (0.1). Default: 5,000 for CIFAR, 0.1 for image folders, none for synthetic
                (test data). 0 validates on the test split, which then also picks the "best" checkpoint.
            train_subset / test_subset: use a seeded random subset of this many images (quick runs).
            train_eval_size: at every validation also score this many training images (a seeded subset of the
                images trained on, fixed for the run) with the evaluation transform, no augmentation, logged as
                `train_eval/acc1`: the train-vs-validation gap measured, not read off augmented (or mixed)
                batches. A second validation loader; 0 disables it. Capped at the training set's size.
            mean / std: normalisation; default: the dataset's (measured on up to 2,000 images for imagefolder).
            synthetic_size / synthetic_classes: size of the synthetic train split (test: a quarter) and classes.
            loader: device (decoded images held on the training device, whole batches augmented there:
                kanvision.data.device) | workers (a DataLoader with num_workers processes) | auto: device when the
                decoded splits take <= 25% of the device's free memory (RAM on a CPU) and the augment runs there
                (cifar, none), else workers. One line at setup says which runs and why.
            cache_dir: where device's decoded uint8 cache is written (default <root>/.kanvision-cache).
        """
        super().__init__()
        if dataset not in DATASETS:
            raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
        from kanvision.data.device import LOADERS
        if loader not in LOADERS:
            raise DataError(f"unknown loader {loader!r}: choose one of {', '.join(LOADERS)}")
        if augment not in AUGMENTS:
            raise DataError(f"unknown augment {augment!r}: choose one of {', '.join(AUGMENTS)}")
        if train_eval_size < 0:
            raise DataError(f"train_eval_size must be a count of training images (0 disables), got {train_eval_size}")
        # A count that went through a float on its way (on an H200 machine's Python 3.12, a YAML
        # `val_split: 1000` reached here as 1000.0 through `int | float`) is still a count, not a fraction.
        whole_count = isinstance(val_split, float) and val_split >= 1 and val_split.is_integer()
        if whole_count:
            val_split = int(val_split)
        if val_split is not None and (val_split < 0 or (isinstance(val_split, float) and val_split >= 1)):
            raise DataError(f"val_split must be a count of images (e.g. 5000) or a fraction in [0, 1) (e.g. 0.1), "
                            f"got {val_split}")
        self.save_hyperparameters()
        if whole_count:
            self.hparams.val_split = val_split
        self.dataset, self.root = dataset, Path(root).expanduser()
        self._mean, self._std = mean, std
        # Image folders checked (and warned about) once per data module: kanvision.data.sources' caches.
        self._warned_absent: set[Path] = set()
        self._unreadable: dict[Path, dict[str, str]] = {}
        self.train_set = self.val_set = self.test_set = None
        self.train_eval_set = None  # un-augmented training images scored at each validation (train_eval_size)
        self._resume_at: dict | None = None  # from a checkpoint: where the interrupted epoch stopped
        self._sampler: SeededSampler | None = None
        self._device_data = None  # kanvision.data.device.DeviceData when the device loader runs
        self.loader_line: str | None = None  # which loader runs and why (printed once)

    # ---------------------------------------------------------------- what the model needs up front
    @property
    def class_names(self) -> list[str]:
        if self.dataset == "cifar10":
            return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        if self.dataset == "synthetic":
            return [f"class_{i}" for i in range(self.hparams.synthetic_classes)]
        if self.dataset == "cifar100":
            if cifar_present(self.root, self.dataset):
                return cifar(self.root, self.dataset, "test").classes
            return [str(i) for i in range(100)]
        return folder_classes(self.root)

    @property
    def num_classes(self) -> int:
        return {"cifar10": 10, "cifar100": 100}.get(self.dataset) or len(self.class_names)

    @property
    def mean(self) -> tuple[float, ...]:
        if self._mean is None:
            self._mean, self._std = default_stats(self.dataset, self.root, self.hparams.img_size, self.hparams.seed,
                                                  unreadable=self._unreadable)
        return tuple(float(v) for v in self._mean)

    @property
    def std(self) -> tuple[float, ...]:
        self.mean  # noqa: B018  (fills both)
        return tuple(float(v) for v in self._std)

    def prepare_data(self) -> None:
        if self.dataset in CIFAR:
            fetch_cifar(self.root, self.dataset, self.hparams.download)

    # ------------------------------------------------------------------------------------ datasets
    def _transforms(self, train: bool):
        from torchvision import transforms as T
        size, aug = self.hparams.img_size, self.hparams.augment if train else "none"
        tensor_input = self.dataset == "synthetic"
        if aug == "deit":
            from timm.data import create_transform
            tf = create_transform(size, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                                  interpolation="bicubic", mean=self.mean, std=self.std)
            return T.Compose([T.ToPILImage(), tf]) if tensor_input else tf
        if aug == "convmixer":
            # locuslab/convmixer-cifar10's ~92.5% recipe (README: --scale=1.0 --jitter=0 --reprob=0 --ra-n=2 --ra-m=12):
            # its RandomResizedCrop at scale (1, 1) and ratio 1 is a plain resize, then flip and torchvision's
            # RandAugment(2 ops, magnitude 12) on the PIL image.
            steps = [T.ToPILImage()] if tensor_input else []
            steps += [T.Resize((size, size), antialias=True), T.RandomHorizontalFlip(),
                      T.RandAugment(num_ops=2, magnitude=12), T.ToTensor(), T.Normalize(self.mean, self.std)]
            return T.Compose(steps)
        if aug == "none":  # evaluation (and augment=none training): the transform predict and analyze use too
            from kanvision.data.transforms import eval_transform
            return eval_transform({"input_size": (3, size, size), "mean": self.mean, "std": self.std})
        steps = [T.Resize((size, size), antialias=True)]
        if aug == "cifar":
            steps += [T.RandomCrop(size, padding=max(1, size // 8)), T.RandomHorizontalFlip()]
        if not tensor_input:
            steps.append(T.ToTensor())
        steps.append(T.Normalize(self.mean, self.std))
        return T.Compose(steps)

    def _make(self, split: str, train_transform: bool):
        ds = self._make_split(split, train_transform)
        ds.kanvision_split = split  # which decoded cache its rows index (kanvision.data.device)
        return ds

    def _make_split(self, split: str, train_transform: bool):
        tf = self._transforms(train_transform)
        if self.dataset == "synthetic":
            n = self.hparams.synthetic_size if split == "train" else max(8, self.hparams.synthetic_size // 4)
            return SyntheticImages(n, self.hparams.synthetic_classes, self.hparams.img_size, self.hparams.seed,
                                   split_seed=0 if split == "train" else 1, transform=tf)
        if self.dataset in CIFAR:
            return cifar_split(self.root, self.dataset, split, tf)
        return image_folder(self.root, split, tf, warned_absent=self._warned_absent, unreadable=self._unreadable)

    def _subset(self, ds, n: int | None, salt: int):
        if n is None or n >= len(ds):
            return ds
        g = torch.Generator().manual_seed(self.hparams.seed + salt)
        return Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())

    @property
    def val_count(self) -> int | float:
        """The hold-out actually used: `val_split`, or the dataset's default when it is None."""
        if self.hparams.val_split is not None:
            return self.hparams.val_split
        return {"cifar10": 5000, "cifar100": 5000, "synthetic": 0}.get(self.dataset, 0.1)

    def has_test_split(self) -> bool:
        """Whether a test split exists, without loading it (an image folder may have only train/)."""
        if self.dataset == "imagefolder":
            return any((self.root / n).is_dir() for n in IMAGE_FOLDER_SPLITS["test"])
        return True

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.hparams.batch_size % world:
            raise DataError(f"batch_size {self.hparams.batch_size} is the global batch and must divide evenly over "
                            f"{world} devices: use a multiple of {world}")
        self.per_device_batch = self.hparams.batch_size // world
        self.mean  # noqa: B018  measured once here for image folders, before workers start
        held_out = self.val_count
        if stage in (None, "fit", "validate") and self.train_set is None:
            train = self._subset(self._make("train", True), self.hparams.train_subset, 1)
            if held_out > 0:
                n_val = held_out if isinstance(held_out, int) else max(1, math.floor(len(train) * held_out))
                if n_val >= len(train):
                    raise DataError(f"val_split {held_out} holds out {n_val} of only {len(train)} training images: "
                                    "give a smaller count or fraction (--data.val_split)")
                perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.hparams.seed)).tolist()
                # Same images, evaluation transforms for the held-out part.
                val_full = self._unaugmented_train()
                self.train_set, self.val_set = Subset(train, perm[n_val:]), Subset(val_full, perm[:n_val])
                self.train_eval_set = self._train_eval(val_full, perm[n_val:])
            else:
                self.train_set = train
                self.train_eval_set = self._train_eval(None, list(range(len(train))))
        # The test split is only read when asked for (or when it doubles as validation): fitting with a
        # hold-out needs no test/ folder.
        if self.test_set is None and (stage in (None, "test", "predict") or held_out == 0):
            self.test_set = self._subset(self._make("test", False), self.hparams.test_subset, 2)
        if self.val_set is None:
            self.val_set = self.test_set
        self._choose_loader()

    def _choose_loader(self) -> None:
        """Once: device or workers (kanvision.data.device.choose_loader), said in one line on rank 0."""
        if self.loader_line is not None:
            return
        from kanvision.data.device import DeviceData, choose_loader
        trainer, device = self.trainer, self._device
        data = DeviceData(self.hparams.img_size, self.hparams.augment, self.mean, self.std, self.hparams.seed,
                          self.hparams.cache_dir or self.root / ".kanvision-cache", self.hparams.num_workers)
        sets = (self.train_set, self.val_set, self.train_eval_set, self.test_set)
        try:
            choice, line = choose_loader(self.hparams.loader, self.hparams.augment, data.decoded_bytes(sets), device,
                                         self.hparams.num_workers, attached=trainer is not None)
        except ValueError as e:
            raise DataError(str(e)) from None
        self._device_data, self.loader_line = (data if choice == "device" else None), line
        if getattr(trainer, "is_global_zero", True):
            print(f"kanvision: {line}")

    def _unaugmented_train(self):
        """The training split (same subset, same order) with evaluation transforms."""
        return self._subset(self._make("train", False), self.hparams.train_subset, 1)

    def _train_eval(self, eval_images, trained: list[int]):
        """A seeded subset of the trained images (indices `trained` into the training split) with evaluation
        transforms: `eval_images` is that split built without augmentation (None: build it)."""
        n = min(self.hparams.train_eval_size, len(trained))
        if n == 0:
            return None
        if eval_images is None:
            eval_images = self._unaugmented_train()
        # Its own salt (3): not the hold-out's permutation, whose head is the validation images.
        pick = torch.randperm(len(trained), generator=torch.Generator().manual_seed(self.hparams.seed + 3))[:n]
        return Subset(eval_images, sorted(trained[i] for i in pick.tolist()))

    # ------------------------------------------------------------------- resuming part-way through an epoch
    def state_dict(self) -> dict:
        """Saved in every checkpoint (Lightning): the epoch being trained and how many of its batches are done.
        Only counted trained batches: the loader's own position runs ahead by what it has prefetched."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        # The sampler's epoch: Lightning's epoch counter moves on before on_train_epoch_end, batch counts later.
        epoch = self._sampler.epoch if self._sampler is not None else trainer.fit_loop.epoch_progress.current.processed
        return {"epoch": epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
                "per_device_batch": self.per_device_batch, "world_size": trainer.world_size}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_at = dict(state_dict) or None

    def _train_sampler(self) -> SeededSampler:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self._device_data is not None:  # the same order, a batch at a time (kanvision.data.device.TrainBatches)
            sampler = self._device_data.train_sampler(self.train_set, self.per_device_batch, world, rank)
        else:
            sampler = SeededSampler(len(self.train_set), self.hparams.seed, num_replicas=world, rank=rank)
        self._sampler = sampler
        at, self._resume_at = self._resume_at, None
        if at:
            done = at["batches"] * at["per_device_batch"] * at["world_size"]  # training images of the epoch
            share = len(self.train_set) // world
            if done >= share // self.per_device_batch * self.per_device_batch * world:  # an epoch-end save
                sampler.epoch = at["epoch"] + 1
            else:
                sampler.epoch, sampler.skip = at["epoch"], done // world
            if (at["per_device_batch"], at["world_size"]) != (self.per_device_batch, world):
                from lightning.pytorch.utilities import rank_zero_warn
                rank_zero_warn(f"resuming with {world} device(s) x batch {self.per_device_batch}, the checkpoint "
                               f"was {at['world_size']} x {at['per_device_batch']}: epoch {at['epoch']} goes on from the same "
                               "count of images, but not with an uninterrupted run's sample order")
        return sampler

    def _loader(self, ds, sampler=None, drop_last: bool = False) -> DataLoader:
        workers = self.hparams.num_workers
        # Its own generator: an iterator's worker seed would otherwise come from the global generator, which
        # dropout and mixup use, at points that differ between an uninterrupted and a resumed run.
        return DataLoader(ds, batch_size=self.per_device_batch, num_workers=workers, drop_last=drop_last,
                          sampler=sampler, generator=torch.Generator().manual_seed(self.hparams.seed),
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())

    def _eval_loader(self, ds, what: str) -> DataLoader:
        """An evaluation loader; under DDP each rank takes its unpadded share (kanvision.data.sharding): every
        image is scored once, where Lightning's DistributedSampler would score a few twice."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self._device_data is not None and world <= len(ds):
            return self._device_data.eval_loader(ds, self.per_device_batch, self._device, world, rank)
        if world == 1:
            return self._loader(ds)
        if len(ds) < world:  # a rank without images would never join the metrics' epoch-end reduction: a hang
            raise DataError(f"the {what} set has {len(ds)} image(s), fewer than the {world} processes evaluating it: "
                            f"use at least {world} images or fewer devices")
        from kanvision.data.sharding import EvalShard
        return self._loader(ds, EvalShard(len(ds), world, rank))

    def train_dataloader(self) -> DataLoader:
        if self._device_data is not None:  # batches made on the training device (kanvision.data.device)
            from kanvision.data.device import batch_loader
            return batch_loader(self._device_data, self._train_sampler(), self._device, self.hparams.seed)
        return self._loader(SeededAugment(self.train_set), self._train_sampler(), drop_last=True)

    @property
    def _device(self) -> torch.device:
        strategy = getattr(self.trainer, "strategy", None)  # None: no Trainer (or a stand-in without one)
        return strategy.root_device if strategy is not None else torch.device("cpu")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation loader, then (train_eval_size > 0) the un-augmented training images' loader: Lightning
        runs them one after the other (dataloader_idx 0 and 1); ImageClassifier logs the second as train_eval/*.
        Under DDP both are sharded without padding (_eval_loader)."""
        if self.train_eval_set is None:
            return self._eval_loader(self.val_set, "validation")
        return [self._eval_loader(self.val_set, "validation"), self._eval_loader(self.train_eval_set, "train_eval")]

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        return self._eval_loader(self.test_set, "test")

    def describe(self) -> dict:
        """The data facts a checkpoint carries (checkpoints.py's "kanvision" record)."""
        return dict(dataset=self.dataset, class_names=self.class_names, mean=list(self.mean), std=list(self.std),
                    img_size=self.hparams.img_size)
