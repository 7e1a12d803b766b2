"""kanvision.data.transforms.eval_transform: the one evaluation transform gives, bit for bit, the tensors of the
hand-written ones it replaced (data module, `kanvision predict`, `kanvision analyze`) on square and non-square
images, PIL and tensor input."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

import kanvision  # noqa: F401  (registers the kan_* models)
from kanvision.data.datamodule import ImageDataModule
from kanvision.data.synthetic import SyntheticImages
from kanvision.data.transforms import eval_data_config, eval_transform
from kanvision.models._factory import CIFAR10_MEAN, CIFAR10_STD


def rgb(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def datamodule_before(size, mean, std):
    """data/datamodule.py `_transforms(train=False)` before: Resize + ToTensor + Normalize."""
    return T.Compose([T.Resize((size, size), antialias=True), T.ToTensor(), T.Normalize(mean, std)])


def predict_before(img, cfg):
    """hub/predict.py `load_image` before: PIL bilinear resize, /255, normalize."""
    _, height, width = cfg["input_size"]
    img = img.resize((width, height), Image.Resampling.BILINEAR)
    return F.normalize(F.pil_to_tensor(img).float().div_(255), cfg["mean"], cfg["std"])


def analysis_before(shape, cfg):
    """analysis/inputs.py `_batches` before: a torchvision Compose."""
    return T.Compose([T.Resize(shape[1:]), T.ToTensor(),
                      T.Normalize(cfg.get("mean", (0.5,) * 3), cfg.get("std", (0.5,) * 3))])


@pytest.mark.parametrize("width,height", [(32, 32), (40, 30)])
def test_same_tensor_as_the_transforms_it_replaced(width, height):
    model = timm.create_model("kan_mixer_tiny_p4_32", num_blocks=1)  # a 32-pixel model, CIFAR-10 statistics
    cfg = model.pretrained_cfg
    img = rgb(width, height)
    got = eval_transform(model)(img)
    assert got.shape == (3, 32, 32) and got.dtype == torch.float32
    assert torch.equal(got, datamodule_before(32, CIFAR10_MEAN, CIFAR10_STD)(img))
    assert torch.equal(got, predict_before(img, cfg))
    assert torch.equal(got, analysis_before((3, 32, 32), cfg)(img))
    # The data module's form (a cfg dict, no model) and an export's config.json (lists) give the same.
    as_dict = dict(input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD)
    assert torch.equal(eval_transform(as_dict)(img), got)
    export_cfg = dict(input_size=[3, 32, 32], mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD), crop_pct=1.0,
                      crop_mode="center", interpolation="bilinear")
    assert torch.equal(eval_transform(export_cfg)(img), got)
    # A value check that does not go through torchvision at all: the top-left output pixel of the identity resize.
    if (width, height) == (32, 32):
        want = (torch.tensor(np.asarray(img)[0, 0], dtype=torch.float32) / 255 - torch.tensor(CIFAR10_MEAN)) \
            / torch.tensor(CIFAR10_STD)
        assert torch.allclose(got[:, 0, 0], want, rtol=0, atol=1e-6)


def test_timm_center_crop_mode_would_differ_on_non_square_images():
    # Why eval_transform forces crop_mode="squash": exports written before kanvision's cfgs said "squash" carry
    # timm's "center", under which timm resizes the shorter side and crops the longer one. Same on square images,
    # not on a 40x30 one.
    from timm.data import create_transform, resolve_data_config

    cfg = dict(input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_pct=1.0, crop_mode="center",
               interpolation="bilinear")
    timm_own = create_transform(**resolve_data_config(pretrained_cfg=cfg), is_training=False)
    square, wide = rgb(32, 32, 1), rgb(40, 30, 1)
    assert torch.equal(timm_own(square), eval_transform(cfg)(square))
    assert not torch.allclose(timm_own(wide), eval_transform(cfg)(wide), atol=1e-3)
    assert eval_data_config(cfg)["crop_mode"] == "squash"


def test_kanvision_policy_overrides_a_plain_timm_models_cfg():
    # kanvision analyze on a plain timm model: crop_pct 0.95 and bicubic in its cfg, whole-image bilinear here.
    model = timm.create_model("test_vit")
    cfg = eval_data_config(model, img_size=(40, 24))
    assert cfg["input_size"] == (3, 40, 24) and cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    assert tuple(cfg["mean"]) == (0.5, 0.5, 0.5)
    img = rgb(50, 35, 2)
    assert torch.equal(eval_transform(model, img_size=(40, 24))(img),
                       analysis_before((3, 40, 24), model.pretrained_cfg)(img))
    with pytest.raises(ValueError, match="model_or_cfg must be"):
        eval_transform("kan_mixer_tiny_p4_32")


@pytest.mark.parametrize("size", [32, 16])
def test_data_module_eval_images_are_the_old_transform_of_the_raw_images(size):
    # Synthetic images are (3, size, size) float tensors in [0, 1]: the old path resized them (a no-op) and
    # normalized them; the shared transform must give the same tensors.
    dm = ImageDataModule("synthetic", batch_size=4, num_workers=0, synthetic_size=8, img_size=size, augment="none")
    dm.setup("test")
    old = T.Compose([T.Resize((size, size), antialias=True), T.Normalize(dm.mean, dm.std)])
    raw = SyntheticImages(8, 10, size, 0, split_seed=1)  # the test split (max(8, 8 // 4) images), untransformed
    assert len(dm.test_set) == len(raw)
    for i in range(len(raw)):
        x, y = dm.test_set[i]
        plain, y_raw = raw[i]
        assert y == y_raw and x.shape == (3, size, size)
        assert torch.equal(x, old(plain))


@pytest.mark.parametrize("source", ["zoo", "shipped"])
def test_a_timm_users_own_transform_is_kanvisions(source):
    # The cfg kanvision writes says squash / crop_pct 1 / bilinear: timm's own resolve + create_transform on a zoo
    # model or a shipped tag (its config.json) gives kanvision's evaluation tensor on a non-square image too.
    from timm.data import create_transform, resolve_model_data_config

    if source == "zoo":
        model = timm.create_model("kan_mixer_tiny_p4_32", num_blocks=1)
    else:
        model = timm.create_model("kan_mixer_tiny_p4_32.cifar10_none", pretrained=True)
    assert model.pretrained_cfg["crop_mode"] == "squash"
    timm_own = create_transform(**resolve_model_data_config(model), is_training=False)
    wide = rgb(40, 30, 3)
    assert torch.equal(timm_own(wide), eval_transform(model)(wide))
