"""The device loader (--data.loader device, kanvision.data.device): the same batches as the DataLoader path,
crop and flip as torchvision computes them, exact resume, disjoint DDP shards, a cache that follows its source,
and the line saying which loader runs."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from kanvision.data.augment import crop_flip, draw_crop_flip
from kanvision.data.datamodule import DataError, ImageDataModule
from kanvision.data.device import TrainBatches, choose_loader
from kanvision.data.sampling import SeededSampler


def _module(loader, **kw):
    args = dict(dataset="synthetic", batch_size=8, num_workers=0, synthetic_size=72, augment="none", val_split=0.25,
                train_eval_size=12, loader=loader)
    dm = ImageDataModule(**{**args, **kw})
    dm.setup("fit")
    return dm


def _same(a_loader, b_loader):
    a, b = list(a_loader), list(b_loader)
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


@pytest.fixture
def folder(tmp_path):
    """An image folder of PNGs of several sizes (so both paths resize), 2 classes, train and test."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 4)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = 20 + 3 * i, 28 - i
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize("source", ["synthetic", "imagefolder"])
def test_device_batches_are_the_workers_batches(source, folder):
    """Un-augmented: every loader (train in SeededSampler's order, hold-out, train_eval, test) gives the same
    images and labels in the same order, bit for bit, as the DataLoader path."""
    kw = dict(dataset="imagefolder", root=str(folder), img_size=16, batch_size=4) if source == "imagefolder" else {}
    workers, device = _module("workers", **kw), _module("device", **kw)
    assert device._device_data is not None and workers._device_data is None
    workers._sampler = None
    _same(workers.train_dataloader(), device.train_dataloader())
    for a, b in zip(workers.val_dataloader(), device.val_dataloader()):
        _same(a, b)
    _same(workers.test_dataloader(), device.test_dataloader())
    # Another epoch: another order, still the same on both paths.
    ta, tb = workers.train_dataloader(), device.train_dataloader()
    ta.sampler.set_epoch(1), tb.sampler.set_epoch(1)
    _same(ta, tb)


def test_crop_flip_is_torchvisions_crop_then_flip_and_draws_are_uniform():
    g = torch.Generator().manual_seed(0)
    pad, n = 4, 4000
    dy, dx, flip = draw_crop_flip(g, n, pad)
    for offsets in (dy, dx):  # RandomCrop.get_params on a padded 40 x 40 image: offsets 0..8, all reachable
        assert offsets.min() == 0 and offsets.max() == 2 * pad
        counts = torch.bincount(offsets, minlength=2 * pad + 1).float()
        assert (counts / n - 1 / (2 * pad + 1)).abs().max() < 0.03
    assert abs(flip.float().mean() - 0.5) < 0.03  # 4000 draws: 4 standard deviations is 0.032
    x = torch.randint(0, 256, (6, 3, 12, 10), generator=g, dtype=torch.uint8)
    got = crop_flip(x, dy[:6], dx[:6], flip[:6], pad)
    for i in range(6):  # torchvision's per-image ops: zero padding, crop at (top, left), then hflip
        ref = TF.crop(TF.pad(x[i], [pad]), int(dy[i]), int(dx[i]), 12, 10)
        assert torch.equal(got[i], TF.hflip(ref) if flip[i] else ref), i


def test_augmented_device_batch_is_the_drawn_crop_of_the_workers_image():
    """augment=cifar on the device: each image is the un-augmented workers image, padded by img_size / 8,
    cropped at the batch's drawn offsets and flipped where drawn, then normalised."""
    plain, aug = _module("workers"), _module("device", augment="cifar")
    sampler = aug.train_dataloader().sampler
    keys = next(iter(sampler))
    x, y = aug._device_data.materialize(keys, torch.device("cpu"))
    raw, _ = next(iter(_module("device").train_dataloader()))  # same order, no augmentation
    mean, std = torch.tensor(plain.mean).view(3, 1, 1), torch.tensor(plain.std).view(3, 1, 1)
    for i in range(len(y)):
        pixels = raw[i] * std + mean  # undo the normalisation to crop with zero fill, as the workers path does
        ref = TF.crop(TF.pad(pixels, [4]), int(keys["dy"][i]), int(keys["dx"][i]), 32, 32)
        ref = (TF.hflip(ref) if keys["flip"][i] else ref)
        assert torch.allclose(x[i], (ref - mean) / std, atol=1e-5)


def test_ddp_shards_are_disjoint_and_follow_the_seeded_sampler():
    n, seed, b = 101, 3, 5
    rows = torch.arange(1000, 1000 + n)  # cache rows of the training images (a hold-out's complement, say)
    shards = []
    for rank in range(2):
        batches = list(TrainBatches(rows, seed, b, pad=4, num_replicas=2, rank=rank, epoch=2))
        assert len(batches) == len(TrainBatches(rows, seed, b, num_replicas=2, rank=rank)) == (n // 2) // b
        got = torch.cat([k["index"] for k in batches])
        expected = [i for i, _ in SeededSampler(n, seed, num_replicas=2, rank=rank, epoch=2)][:len(got)]
        assert got.tolist() == [1000 + i for i in expected]
        shards.append(set(got.tolist()))
    assert not shards[0] & shards[1]
    # A resumed epoch (skip = images done by this rank) yields the remaining batches, crops and flips unchanged.
    whole = list(TrainBatches(rows, seed, b, pad=4, num_replicas=2, rank=1, epoch=2))
    resumed = list(TrainBatches(rows, seed, b, pad=4, num_replicas=2, rank=1, epoch=2, skip=3 * b))
    assert len(resumed) == len(whole) - 3
    for k_whole, k_resumed in zip(whole[3:], resumed):
        assert all(torch.equal(k_whole[k], k_resumed[k]) for k in ("index", "dy", "dx", "flip"))


def test_cache_is_reused_and_rebuilt_when_the_source_changes(folder):
    def setup():
        dm = ImageDataModule("imagefolder", root=str(folder), img_size=16, batch_size=4, num_workers=0,
                             loader="device", val_split=0, train_eval_size=0)
        dm.setup("fit")
        x, y = next(iter(dm.val_dataloader()))  # the test split, unshuffled: image 0 of class cat first
        return dm._device_data.built, x[0]

    built, first = setup()
    assert built == ["imagefolder-test-16px"]
    meta = json.loads((folder / ".kanvision-cache" / "imagefolder-test-16px.json").read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["shape"] == [8, 3, 16, 16] and meta["dtype"] == "uint8"
    assert setup()[0] == []  # unchanged source: read from the cache
    target = folder / "test" / "cat" / "0.png"
    Image.new("RGB", (16, 16), (255, 255, 255)).save(target)
    os.utime(target, ns=(1, 1))  # another size and mtime: a new hash
    built, now = setup()
    assert built == ["imagefolder-test-16px"] and not torch.equal(now, first)
    assert torch.allclose(now * torch.tensor([0.5]), now[:, :1, :1] * torch.tensor([0.5]))  # all white: one value


def test_loader_line_and_choice(capsys, folder):
    dm = _module("auto")
    assert "data loader: workers (0 processes): no Trainer attached" in capsys.readouterr().out
    big = 10 ** 15
    cpu = torch.device("cpu")
    assert choose_loader("auto", "cifar", 1000, cpu, 2)[0] == "device"
    choice, line = choose_loader("auto", "cifar", big, cpu, 2)
    assert choice == "workers" and "too large" in line and "<= 25% of free memory" in line
    choice, line = choose_loader("auto", "deit", 1000, cpu, 2)
    assert choice == "workers" and "--data.augment deit runs RandAugment" in line
    with pytest.raises(DataError, match=r"^--data.loader device augments cifar and none on the device; "
                                        r"--data.augment deit \(RandAugment \+ random erasing, per image\) needs "
                                        r"--data.loader workers"):
        _module("device", augment="deit")
    with pytest.raises(DataError, match="unknown loader 'gpu': choose one of auto, device, workers"):
        ImageDataModule("synthetic", loader="gpu")


def test_fit_prints_the_loader_and_trains_from_the_device(tmp_path, capsys):
    import lightning as L

    from kanvision.train.module import ImageClassifier

    data = ImageDataModule("synthetic", batch_size=8, num_workers=0, synthetic_size=32, augment="cifar")
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(ImageClassifier(model="kan_mixer_tiny_p4_32", model_kwargs={"num_blocks": 1}, num_classes=10), data)
    out = capsys.readouterr().out
    assert out.count("kanvision: data loader: device: ") == 1 and "auto picks device" in out
    assert trainer.global_step == 2 and data._device_data is not None
    # Shorter than a logging interval (50 steps): the last step still reports the fit's rate.
    assert float(trainer.callback_metrics["train/images_per_s"]) > 0


@pytest.mark.slow
def test_mid_epoch_resume_is_bit_identical_on_the_device(tmp_path, capsys):
    """Stopped by SIGINT mid-epoch 1 and resumed from that checkpoint: the same final weights as a straight run,
    with crop + flip drawn on the device loader's side, mixup and drop-path (tests/test_resume.py's run)."""
    from test_resume import _config, _fit

    cfg = _config(tmp_path, data={"loader": "device", "num_workers": 0, "synthetic_size": 48, "batch_size": 8,
                                  "train_eval_size": 0}, trainer={"max_epochs": 2})  # 36 images: 4 steps per epoch
    quick = "--test_after_fit=false"
    _fit(cfg, tmp_path, "full", quick)
    with pytest.raises(SystemExit):
        _fit(cfg, tmp_path, "part", quick, "--trainer.callbacks+=test_resume.SigintAtStep",
             "--trainer.callbacks.init_args.step=6")
    run = tmp_path / "part" / "version_0"
    status = json.loads((run / "status.json").read_text())
    assert status["step"] == 6
    _fit(cfg, tmp_path, "part", quick, f"--ckpt_path={status['checkpoint']}")
    assert "data loader: device, as --data.loader device asks" in capsys.readouterr().out
    full, resumed = torch.load(tmp_path / "full" / "version_0" / "final.pt"), torch.load(run / "final.pt")
    assert full.keys() == resumed.keys()
    assert not [k for k in full if not torch.equal(full[k], resumed[k])]
