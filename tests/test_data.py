"""ImageDataModule: synthetic / imagefolder / CIFAR-missing paths, splits, per-device batch, sampler."""
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from kanvision.data.datamodule import DataError, ImageDataModule, SyntheticImages


def test_synthetic_loaders_and_metadata():
    dm = ImageDataModule("synthetic", batch_size=8, num_workers=0, synthetic_size=64, synthetic_classes=4)
    assert dm.num_classes == 4 and dm.class_names[0] == "class_0"
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and y.max() < 4
    assert len(dm.val_set) == 16 and dm.val_set is dm.test_set  # synthetic (test data) has no default hold-out
    assert dm.describe()["mean"] == [0.5, 0.5, 0.5]


def test_synthetic_classes_are_learnable_structure():
    ds = SyntheticImages(200, num_classes=3, seed=0)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = ds.labels
    centroids = torch.stack([x[y == c].mean(0) for c in range(3)])
    nearest = torch.cdist(x.flatten(1), centroids.flatten(1)).argmin(1)
    assert (nearest == y).float().mean() > 0.95  # a nearest-centroid classifier separates the classes
    test = SyntheticImages(50, num_classes=3, seed=0, split_seed=1)
    assert torch.equal(test.prototypes, ds.prototypes) and not torch.equal(test.noise[:50], ds.noise[:50])


def test_val_split_is_seeded_and_disjoint():
    def split(seed):
        dm = ImageDataModule("synthetic", batch_size=8, num_workers=0, synthetic_size=100, val_split=0.2, seed=seed)
        dm.setup("fit")
        return dm.train_set.indices, dm.val_set.indices

    train, val = split(0)
    assert len(val) == 20 and not set(train) & set(val) and len(train) + len(val) == 100
    assert split(0) == (train, val) and split(1) != (train, val)



def test_train_eval_is_a_fixed_unaugmented_subset_of_the_trained_images():
    """The second validation loader: a seeded subset of the images trained on (never the held-out ones), with the
    evaluation transform (here: normalisation only) although training augments (crop + flip)."""
    def build(seed=0, n=20, **kw):
        dm = ImageDataModule("synthetic", batch_size=8, num_workers=0, synthetic_size=100, val_split=0.2,
                             augment="cifar", train_eval_size=n, seed=seed, **kw)
        dm.setup("fit")
        return dm

    dm = build()
    picked = dm.train_eval_set.indices
    assert len(picked) == 20 and len(set(picked)) == 20
    assert set(picked) <= set(dm.train_set.indices) and not set(picked) & set(dm.val_set.indices)
    assert build().train_eval_set.indices == picked and build(seed=1).train_eval_set.indices != picked
    raw = SyntheticImages(100, 10, 32, seed=0, split_seed=0)  # the training split, no transform
    x, y = next(iter(dm.val_dataloader()[1]))
    expected = torch.stack([(raw[i][0] - 0.5) / 0.25 for i in picked[:8]])
    assert torch.allclose(x, expected, atol=1e-6) and y.tolist() == [raw[i][1] for i in picked[:8]]
    val_loader, train_loader = dm.val_dataloader()
    assert val_loader.dataset is dm.val_set and len(train_loader.dataset) == 20
    assert len(build(n=10_000).train_eval_set) == len(dm.train_set)  # capped at the training images
    off = build(n=0)
    assert off.train_eval_set is None and off.val_dataloader().dataset is off.val_set  # one loader, as before
    no_hold_out = ImageDataModule("synthetic", batch_size=8, num_workers=0, synthetic_size=40, train_eval_size=16)
    no_hold_out.setup("fit")  # synthetic validates on its test split: the subset comes from all training images
    assert len(no_hold_out.train_eval_set) == 16 and max(no_hold_out.train_eval_set.indices) < 40
    with pytest.raises(DataError, match="train_eval_size must be a count"):
        ImageDataModule("synthetic", train_eval_size=-1)

def test_global_batch_is_split_over_devices():
    dm = ImageDataModule("synthetic", batch_size=12, num_workers=0, synthetic_size=48)
    dm.trainer = SimpleNamespace(world_size=3)
    dm.setup("fit")
    assert dm.per_device_batch == 4
    dm = ImageDataModule("synthetic", batch_size=10, num_workers=0)
    dm.trainer = SimpleNamespace(world_size=4)
    with pytest.raises(DataError, match="global batch and must divide evenly over 4 devices"):
        dm.setup("fit")


def test_missing_cifar_says_where_and_what_to_do(tmp_path):
    dm = ImageDataModule("cifar10", root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg and "--data.root" in msg
    assert "--data.dataset imagefolder" in msg
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        dm.setup("fit")
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        ImageDataModule("svhn")


@pytest.fixture
def image_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c, name in enumerate(["ant", "bee", "cow"]):
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for i in range(4):
                arr = (torch.rand(20, 24, 3, generator=g) * 80 + 60 * c).byte().numpy()
                Image.fromarray(arr).save(d / f"{i}.png")
    return tmp_path


def test_imagefolder(image_folder):
    dm = ImageDataModule("imagefolder", root=str(image_folder), batch_size=4, num_workers=0, img_size=16,
                         augment="cifar")
    assert dm.class_names == ["ant", "bee", "cow"] and dm.num_classes == 3
    dm.setup("fit")
    assert 0.2 < dm.mean[0] < 0.8 and all(s > 0 for s in dm.std)  # measured on the train images
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16)
    assert dm.test_set is None and len(dm.val_set) == 1  # 10% of 12 held out; fit does not read test/
    dm.setup("test")
    assert len(dm.test_set) == 12


def test_imagefolder_missing_split(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    dm = ImageDataModule("imagefolder", root=str(tmp_path), num_workers=0)
    with pytest.raises(DataError, match=r"imagefolder .*train: Found no valid file for the classes a"):
        dm.setup("test")
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "0.png")
    with pytest.raises(DataError, match=r"no test images at .*test or .*val"):
        ImageDataModule("imagefolder", root=str(tmp_path), num_workers=0).setup("test")
    with pytest.raises(DataError, match="no train images"):
        ImageDataModule("imagefolder", root=str(tmp_path / "x")).num_classes


def test_deit_augment_runs_on_synthetic():
    dm = ImageDataModule("synthetic", batch_size=4, num_workers=0, synthetic_size=8, augment="deit")
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 3, 32, 32)


def test_subsets():
    dm = ImageDataModule("synthetic", batch_size=4, num_workers=0, synthetic_size=64, train_subset=20, test_subset=5)
    dm.setup("fit")
    assert len(dm.train_set) == 20 and len(dm.test_set) == 5


def test_default_validation_is_a_seeded_hold_out_of_training_images(image_folder, monkeypatch):
    """Model selection never sees the test split: CIFAR holds out 5,000 training images, folders 10%; the
    test split is not even read for fit (a folder without test/ fits), and val_split 0 is the only way back."""
    import shutil
    assert ImageDataModule("cifar10").val_count == 5000 and ImageDataModule("cifar100").val_count == 5000
    assert ImageDataModule("cifar10", val_split=0).val_count == 0
    shutil.rmtree(image_folder / "test")
    dm = ImageDataModule("imagefolder", root=str(image_folder), batch_size=2, num_workers=0, img_size=16,
                         mean=[0.5] * 3, std=[0.5] * 3)
    assert dm.val_count == 0.1 and not dm.has_test_split()
    dm.setup("fit")
    n = len(dm.train_set) + len(dm.val_set)
    assert len(dm.val_set) == max(1, int(n * 0.1)) and dm.test_set is None
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    counted = ImageDataModule("synthetic", synthetic_size=100, val_split=30, num_workers=0)
    counted.setup("fit")
    assert len(counted.val_set) == 30 and len(counted.train_set) == 70
    with pytest.raises(DataError, match="val_split 100 holds out 100 of only 100"):
        ImageDataModule("synthetic", synthetic_size=100, val_split=100, num_workers=0).setup("fit")
    with pytest.raises(DataError, match="a count of images .* or a fraction"):
        ImageDataModule("synthetic", val_split=1.5)


def test_imagefolder_test_split_labelled_by_training_classes(image_folder):
    """A test split missing a class keeps the training indices (bee stays 1) and says which is missing, once."""
    import shutil
    shutil.rmtree(image_folder / "test" / "ant")
    dm = ImageDataModule("imagefolder", root=str(image_folder), batch_size=4, num_workers=0, img_size=16,
                         mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.warns(UserWarning, match=r"no folder for training class\(es\) ant: .*other 2 classes") as w:
        dm.setup("test")
    assert sum("no folder for training class" in str(m.message) for m in w) == 1
    assert sorted(set(dm.test_set.targets)) == [1, 2]
    assert [dm.test_set.targets[i] for i, (p, _) in enumerate(dm.test_set.samples) if "/bee/" in p] == [1] * 4


def test_imagefolder_test_class_unknown_to_training_is_refused(image_folder):
    (image_folder / "test" / "zebra").mkdir()
    Image.new("RGB", (8, 8)).save(image_folder / "test" / "zebra" / "0.png")
    dm = ImageDataModule("imagefolder", root=str(image_folder), batch_size=4, num_workers=0, img_size=16,
                         mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(DataError, match=r"test: class folder\(s\) zebra are not training classes \(train has "
                                        r"ant, bee, cow\)"):
        dm.setup("test")


def test_unreadable_images_skipped_with_one_warning(image_folder):
    """A zero-byte or truncated JPEG ended the run mid-epoch with an OSError naming no file."""
    ant = image_folder / "train" / "ant"
    (ant / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(ant / "whole.jpg", quality=90)
    data = (ant / "whole.jpg").read_bytes()
    (ant / "cut.jpg").write_bytes(data[: len(data) // 2])
    (ant / "tail.jpg").write_bytes(data + b"trailing bytes")  # after the end marker: still a good image
    dm = ImageDataModule("imagefolder", root=str(image_folder), batch_size=4, num_workers=0, img_size=16)
    with pytest.warns(UserWarning, match=r"train: skipping 2 unreadable image file\(s\) of 16: ant/cut.jpg \(OSError"
                                         r".*\), ant/empty.jpg \(empty file\)$") as w:
        dm.setup("fit")
    assert sum("unreadable" in str(m.message) for m in w) == 1  # one warning, also with mean/std measured
    folder = dm.train_set.dataset  # the hold-out split is a Subset of the folder
    names = sorted(p.rsplit("/", 1)[1] for p, _ in folder.samples if "/ant/" in p)
    assert names == ["0.png", "1.png", "2.png", "3.png", "tail.jpg", "whole.jpg"]
    assert len(folder.targets) == 14 and len(dm.train_set) == 13 and len(dm.val_set) == 1
    assert sum(len(y) for _, y in dm.train_dataloader()) == 12  # every batch loads (drop_last)


def test_failed_download_leaves_no_empty_data_dir(tmp_path, monkeypatch):
    """`kanvision fit` without network left an empty ./data (and any partial archive) behind."""
    import urllib.error
    from pathlib import Path

    from torchvision import datasets

    def offline(root, train=True, download=False, **kw):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets, "CIFAR10", offline)
    dm = ImageDataModule("cifar10", root=str(tmp_path / "new" / "data"))
    with pytest.raises(DataError, match="the download failed \\(URLError"):
        dm.prepare_data()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()  # a directory that was there before is left as it is
    with pytest.raises(DataError, match="the download failed"):
        ImageDataModule("cifar10", root=str(tmp_path / "mine")).prepare_data()
    assert (tmp_path / "mine").is_dir()


def test_a_whole_float_val_split_is_a_count(tmp_path):
    """On one GPU machine (Python 3.12) a YAML `val_split: 1000` arrived as 1000.0 and was refused as a
    fraction >= 1 (then, half-fixed, read as a fraction: 6,000,000 images held out). 1000.0 is 1000 images."""
    from kanvision.data.datamodule import DataError
    dm = ImageDataModule(dataset="synthetic", synthetic_size=300, val_split=100.0, batch_size=10)
    assert dm.hparams.val_split == 100 and isinstance(dm.hparams.val_split, int)
    dm.setup("fit")
    assert len(dm.val_set) == 100 and len(dm.train_set) == 200
    with pytest.raises(DataError, match="fraction"):
        ImageDataModule(dataset="synthetic", val_split=1.5)
