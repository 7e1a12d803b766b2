"""Inputs are what they claim (issue 25, item 6): image modes PIL would clip, devices this machine lacks, flags that
contradict a checkpoint, a pretrained tag at a size its weights cannot serve: converted right, or one line each.

Expected pixel values are written out here from what each mode means (16-bit: v * 255 / 65535 rounded; alpha over
white: c * a + 255 * (1 - a)), not taken from kanvision.data.images.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms

from kanvision.data.images import ImageModeError, open_rgb, to_rgb, unreadable_reason
from kanvision.data.sources import image_folder
from kanvision.hub import checkpoints as C
from kanvision.hub.predict import load_image, main as predict_main

REPO = Path(__file__).resolve().parent.parent


def gray16() -> np.ndarray:
    """A 48x64 16-bit image with structure: a horizontal ramp over the whole 0..65535 range, a dark square and a
    bright bar. Almost every value is above 255, so PIL's clipping conversion makes it (nearly) all white."""
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)
    img = np.tile(ramp, (48, 1))
    img[8:24, 8:24] = 1000   # dark square: 1000 * 255 / 65535 = 3.89 -> 4
    img[30:34, :] = 50000    # bright bar: 194.55 -> 195
    return img


def expected8(values: np.ndarray) -> np.ndarray:
    return np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


@pytest.fixture
def png16(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(gray16()).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"  # what Pillow gives for a 16-bit grayscale PNG
        assert np.asarray(img.convert("L")).mean() > 240  # PIL's own conversion: white (the bug this guards)
    return path


def test_16bit_png_is_scaled_by_its_range_not_clipped(png16):
    rgb = np.asarray(open_rgb(png16))
    assert rgb.shape == (48, 64, 3) and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], expected8(gray16()))
    assert rgb.mean() < 160 and rgb[16, 16, 0] == 4 and rgb[31, 0, 0] == 195 and rgb[0, -1, 0] == 255


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_16bit_byte_orders(mode):
    values = gray16()
    raw = values.astype(">u2" if mode.endswith("B") else "<u2").tobytes()
    img = Image.frombytes(mode, (64, 48), raw)
    np.testing.assert_array_equal(np.asarray(to_rgb(img))[..., 0], expected8(values))


def test_32bit_integer_and_float_images():
    values = gray16().astype(np.int32)
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(values)))[..., 0], expected8(values))
    with pytest.raises(ImageModeError, match=r"^x\.tif: I image \(32-bit integer\) with values -5\.\.65535"):
        to_rgb(Image.fromarray(np.where(values == 0, -5, values).astype(np.int32)), "x.tif")
    unit = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(unit)))[..., 0], np.rint(unit * 255.0))
    eight = (unit * 200 + 2).astype(np.float32)  # 2..202: an 8-bit range stored as float
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(eight)))[..., 0], np.rint(eight))
    with pytest.raises(ImageModeError, match=r"F image \(32-bit float\) with values 0\.\.1000: .* white point"):
        to_rgb(Image.fromarray((unit * 1000).astype(np.float32)))
    with pytest.raises(ImageModeError, match="NaN or infinite"):
        to_rgb(Image.fromarray(np.where(unit > 0.5, np.nan, unit).astype(np.float32)))


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(200, 10, 20, 255), (200, 10, 20, 0), (0, 0, 0, 128)])
    a = 128 / 255
    want = [[200, 10, 20], [255, 255, 255], [round(255 * (1 - a))] * 3]
    np.testing.assert_array_equal(np.asarray(to_rgb(rgba))[0], want)
    la = Image.new("LA", (2, 1))
    la.putdata([(40, 255), (40, 0)])
    np.testing.assert_array_equal(np.asarray(to_rgb(la))[0], [[40] * 3, [255] * 3])
    # A palette PNG whose index 0 is transparent (tRNS), as GIF/PNG icons are: PIL's convert("RGB") gives the colour
    # stored under it (black here); we give what a viewer shows.
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 30, 60, 90] + [0] * 762)
    pal.putdata([0, 1])
    pal.save(tmp_path / "pal.png", transparency=0)
    with Image.open(tmp_path / "pal.png") as img:
        assert img.mode == "P" and np.asarray(img.convert("RGB"))[0, 0].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "pal.png"))[0], [[255, 255, 255], [30, 60, 90]])


def test_cmyk_is_converted_and_lab_refused_by_name(tmp_path):
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # full magenta + yellow: red
    cmyk.save(tmp_path / "c.jpg")
    assert np.asarray(open_rgb(tmp_path / "c.jpg")).reshape(-1, 3).mean(0)[0] > 200
    with pytest.raises(ImageModeError, match=r"^lab\.tif: LAB image: not read: kanvision reads .*convert this one"):
        to_rgb(Image.new("LAB", (2, 2)), "lab.tif")


def test_image_folder_reads_16bit_and_skips_refused_files_by_name(png16, tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(gray16()).save(root / split / cls / "g16.png")
    bad = np.full((8, 8), 1000.0, dtype=np.float32)
    Image.fromarray(bad).save(root / "train" / "a" / "float.tif")
    assert "F image (32-bit float) with values 1000..1000" in unreadable_reason(str(root / "train" / "a" / "float.tif"))
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image file\(s\) of 3: a/float\.tif \(F image"):
        ds = image_folder(root, "train", transforms.ToTensor())
    x, _ = ds[0]
    torch.testing.assert_close(x, torch.from_numpy(expected8(gray16())).float().div(255).expand(3, -1, -1))


@pytest.fixture(scope="module")
def mixer_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = timm.create_model("kan_mixer_tiny_p4_32", num_blocks=1, num_classes=3)
    meta = dict(model="kan_mixer_tiny_p4_32", kan="none", num_classes=3, model_kwargs={"num_blocks": 1},
                dataset="synthetic", class_names=["x", "y", "z"], mean=[0.5] * 3, std=[0.25] * 3, img_size=32, metrics={})
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "kanvision": meta},
               root / "run.ckpt")
    return root / "run.ckpt"


def test_predict_reads_16bit_images_and_names_refused_ones(mixer_ckpt, png16, tmp_path, capsys):
    model = C.load_pretrained(mixer_ckpt)
    x = load_image(png16, model)
    white = (1 - 0.5) / 0.25
    assert x.shape == (3, 32, 32) and x.mean() < white - 0.5  # not the white image PIL's clipping made of it
    Image.fromarray(np.full((8, 8), 1e4, dtype=np.float32)).save(tmp_path / "hot.tif")
    with pytest.raises(SystemExit) as e:
        predict_main([str(mixer_ckpt), str(png16), str(tmp_path / "hot.tif"), "--device", "cpu"])
    assert e.value.code == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"kanvision predict: {tmp_path / 'hot.tif'}: F image (32-bit float) with values ")
    assert captured.out.startswith(str(png16))


def _missing_cuda() -> str:
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def test_predict_on_a_device_this_machine_lacks_is_one_line(mixer_ckpt, png16, capsys):
    with pytest.raises(SystemExit) as e:
        predict_main([str(mixer_ckpt), str(png16), "--device", _missing_cuda()])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("kanvision predict: error: device 'cuda") and err.count("\n") == 1


def test_analyze_device_and_checkpoint_contradictions_are_one_line(mixer_ckpt):
    from kanvision.analysis.cli import main as analyze_main
    device = "cuda:3" if torch.cuda.device_count() <= 3 else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(SystemExit) as e:
        analyze_main(["throughput", "--model", "kan_mixer_tiny_p4_32", "--device", device])
    message = str(e.value.code)
    assert message.startswith(f"kanvision analyze throughput: device '{device}' asked for, but ") and "\n" not in message
    for flags, named in ((["--kan", "rswaf"], "--kan rswaf"), (["--model", "kan_deit_tiny_patch4_32"], "--model kan_deit"),
                         (["--kan-kwargs", '{"grid_size": 3}'], "--kan-kwargs")):
        with pytest.raises(SystemExit) as e:
            analyze_main(["throughput", "--checkpoint", str(mixer_ckpt), "--device", "cpu", *flags])
        message = str(e.value.code)
        assert message.startswith(f"kanvision analyze: {named}") and "holds kan_mixer_tiny_p4_32 kan=none" in message
        assert "\n" not in message
    # The same model named again is no contradiction: it reaches the measurement (1 tiny repeat).
    rows = analyze_main(["throughput", "--checkpoint", str(mixer_ckpt), "--device", "cpu", "--kan", "none",
                         "--model", "kan_mixer_tiny_p4_32", "--batch-size", "2", "--warmup", "0", "--repeats", "1",
                         "--out", str(mixer_ckpt.parent / "tp"), "--no-progress"])
    assert len(rows) == 1


SHIPPED = REPO / "checkpoints" / "manifest.json"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped checkpoints in this checkout")
def test_pretrained_tag_at_a_size_its_weights_cannot_serve(monkeypatch):
    monkeypatch.delenv("KANVISION_CHECKPOINTS", raising=False)
    tags = {e["tag"] for e in json.loads(SHIPPED.read_text())["entries"]}
    tag = "kan_mixer_tiny_p4_32.cifar10_bspline"
    if tag not in tags:
        pytest.skip(f"{tag} not shipped")
    with pytest.raises(ValueError) as e:
        timm.create_model(tag, pretrained=True, img_size=64)
    message = str(e.value)
    assert message.startswith(f"{tag} was trained at input size 32x32") and "cannot serve img_size=64" in message
    assert "drop img_size to load them" in message and "\n" not in message
    with pytest.raises(ValueError, match="cannot serve num_blocks=4 .*drop num_blocks"):
        timm.create_model(tag, pretrained=True, num_blocks=4)
    # What the weights can serve still loads: the trained size, and another head (fine-tuning).
    model = timm.create_model(tag, pretrained=True, img_size=32, num_classes=5)
    assert model.head.out_features == 5


def test_fit_on_an_accelerator_this_machine_lacks_is_one_line(tmp_path):
    from kanvision.cli import main

    flags = (["--trainer.accelerator", "gpu"] if not torch.cuda.is_available() else
             ["--trainer.accelerator", "gpu", "--trainer.devices", str(torch.cuda.device_count() + 1)])
    with pytest.raises(SystemExit) as e:
        main(["fit", "--model.model", "kan_mixer_tiny_p4_32", "--model.kan", "none", "--data.dataset", "synthetic",
              "--trainer.default_root_dir", str(tmp_path / "runs"), *flags])
    message = str(e.value.code)
    assert message.startswith("kanvision: error: ") and "\n" not in message
    if not torch.cuda.is_available():
        assert message.startswith("kanvision: error: --trainer.accelerator gpu: no CUDA device is usable here")
        assert message.endswith("use --trainer.accelerator cpu")
    assert not list((tmp_path / "runs").rglob("version_*"))  # the run directory made for it was removed
