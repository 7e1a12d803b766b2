"""`kanvision predict`: preprocessing from the checkpoint's config, top-k output, bad images reported."""
import json

import pytest
import timm
import torch
from PIL import Image

from kanvision.hub import checkpoints as C
from kanvision.hub.predict import load_image, main, predict_images

CLASSES = ["cat", "dog", "frog"]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3).eval()
    meta = dict(model="resnet10t", kan=None, num_classes=3, model_kwargs={}, dataset="synthetic", class_names=CLASSES,
                mean=MEAN, std=STD, img_size=24, metrics={})
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "kanvision": meta},
               root / "run.ckpt")
    C.export(root / "run.ckpt", root / "exp")
    Image.new("RGB", (40, 30), (255, 0, 51)).save(root / "red.png")
    Image.effect_noise((50, 50), 60).save(root / "noise.jpg")  # grayscale JPEG: must become RGB
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return model, root


def test_load_image_uses_checkpoint_size_and_normalization(ckpt):
    _, root = ckpt
    model = C.load_pretrained(root / "exp")
    x = load_image(root / "red.png", model)
    assert x.shape == (3, 24, 24)
    expected = [(255 / 255 - MEAN[0]) / STD[0], (0 - MEAN[1]) / STD[1], (51 / 255 - MEAN[2]) / STD[2]]
    torch.testing.assert_close(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)
    assert load_image(root / "noise.jpg", model).shape == (3, 24, 24)


def test_json_output_matches_the_model(ckpt, capsys):
    model, root = ckpt
    images = [str(root / "red.png"), str(root / "noise.jpg")]
    assert main([str(root / "exp"), *images, "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out["results"]] == images and out["errors"] == []
    loaded = C.load_pretrained(root / "exp")
    with torch.no_grad():
        probs = model(torch.stack([load_image(p, loaded) for p in images])).softmax(-1)
    for r, p in zip(out["results"], probs):
        assert len(r["top"]) == 3  # top-5 capped at the number of classes
        assert [t["index"] for t in r["top"]] == p.argsort(descending=True).tolist()
        assert [t["class"] for t in r["top"]] == [CLASSES[t["index"]] for t in r["top"]]
        torch.testing.assert_close(torch.tensor([t["prob"] for t in r["top"]]), p.sort(descending=True).values)


def test_bad_images_reported_others_processed(ckpt, capsys):
    _, root = ckpt
    with pytest.raises(SystemExit) as e:
        main([str(root / "run.ckpt"), str(root / "missing.png"), str(root / "broken.jpg"), str(root / "red.png")])
    assert e.value.code == 1
    captured = capsys.readouterr()
    assert "missing.png: no such file" in captured.err and "broken.jpg: cannot read image" in captured.err
    assert "Traceback" not in captured.err
    lines = captured.out.splitlines()
    assert lines[0].endswith("red.png") and len(lines) == 4 and lines[1].strip().startswith("1. ")
    assert lines[1].rstrip().endswith("%") and any(c in lines[1] for c in CLASSES)


def test_topk_and_names_without_class_names(ckpt):
    _, root = ckpt
    model = C.load_pretrained(root / "run.ckpt")
    model.class_names, model.pretrained_cfg = None, dict(model.pretrained_cfg, label_names=None)
    results, errors = predict_images(model, [str(root / "red.png")], topk=2)
    assert errors == [] and len(results[0]["top"]) == 2 and results[0]["top"][0]["class"].startswith("class_")


def test_bad_checkpoint_one_line(tmp_path, capsys):
    (tmp_path / "x.ckpt").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x.ckpt"), "img.png"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "x.ckpt: not a readable PyTorch checkpoint" in err and "\n" not in err


@pytest.mark.parametrize("topk", ["0", "-1"])
def test_topk_below_one_is_one_line(ckpt, capsys, topk):
    _, root = ckpt
    with pytest.raises(SystemExit) as e:
        main([str(root / "exp"), str(root / "red.png"), "--topk", topk])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == f"kanvision predict: error: --topk must be 1 or more (the number of classes to list), got {topk}\n"
    assert captured.out == ""
    with pytest.raises(ValueError, match="topk must be >= 1"):
        predict_images(C.load_pretrained(root / "exp"), [str(root / "red.png")], topk=int(topk))
