"""The shipped weights (checkpoints/manifest.json) load by their timm tag from this checkout and score the
fixed 500-image subset of the CIFAR-10 JPEG test images (50 per class, read from the archive) exactly as
recorded when they were shipped. The full 10,000-image re-measurement is
`kanvision test --config configs/trainer/cpu.yaml --pretrained <tag> --data.dataset imagefolder --data.root DIR`."""
import json
from pathlib import Path

import pytest
import timm

from cifar_jpeg import default_archive, score_test_subset, fixed_test_subset
from marks import slow_after

MANIFEST = Path(__file__).resolve().parent.parent / "checkpoints" / "manifest.json"
ENTRIES = json.loads(MANIFEST.read_text())["entries"] if MANIFEST.is_file() else []


@pytest.fixture(scope="module")
def archive():
    path = default_archive()
    if path is None:
        pytest.skip("no CIFAR-10 JPEG archive (../shared/data/cifar10-jpeg.tar.gz or $KANVISION_CIFAR10_JPEG)")
    return path


def test_subset_is_fixed_and_balanced(archive):
    images, labels, names = fixed_test_subset(archive, 50)
    assert names[:2] == ("test/airplane/0000.jpg", "test/airplane/0001.jpg") and names[50] == "test/automobile/0000.jpg"
    assert list(labels) == [k for k in range(10) for _ in range(50)] and images[0].size == (32, 32)


@pytest.mark.parametrize("entry", slow_after(ENTRIES, 2), ids=[e["tag"] for e in ENTRIES])
def test_shipped_weights_score_as_recorded(entry, archive, monkeypatch):
    monkeypatch.delenv("KANVISION_CHECKPOINTS", raising=False)  # this checkout's checkpoints/
    model = timm.create_model(entry["tag"], pretrained=True)
    got = score_test_subset(model, archive, per_class=50)
    want = entry["subset_check"]
    assert got["images"] == want["images"] == 500
    # The same weights and images on another CPU: at most a couple of near-ties may flip (BLAS order).
    assert abs(got["top1_correct"] - want["top1_correct"]) <= 2, (got, want)
    assert abs(got["top5_correct"] - want["top5_correct"]) <= 2, (got, want)
    # The subset is a sample of the test set the manifest's accuracy was measured on.
    assert abs(got["top1_correct"] / 500 - entry["test_top1"]) < 0.08
