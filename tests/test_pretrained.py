"""Pretrained tags (kanvision.hub.pretrained): timm tags, the checkpoints directory, predict and validate/test from a tag.

Representative tags are shipped here into a tmp directory the way the real ones are: a kanvision training checkpoint
per tag (the real kan_mixer_tiny_p4_32 with the tag's options, weights moved off any seed's init) goes
through `kanvision.hub.checkpoints.export`, and a manifest lists the files with their sha256.
"""
import json
import re
import shutil
from pathlib import Path

import lightning as L  # noqa: F401  (imported at collection: its log handlers must not bind a test's capture)
import pytest
import timm
import torch
import torch.nn.functional as F

from kanvision.hub import checkpoints as C
from kanvision.hub import pretrained as P
from kanvision.train.cli import lightning_main
from kanvision.hub.predict import main as predict_main

ARCH = "kan_mixer_tiny_p4_32"
BSPLINE, NONE, MATCH, RSWAF = (f"{ARCH}.cifar10_{k}" for k in ("bspline", "none", "none_match_bspline", "rswaf"))
CONV_NONE, CONV_BSPLINE = (f"kan_convmixer_128_8_p4.cifar10_{k}" for k in ("none", "bspline"))
# Shipped here: the six first weights, a second seed and a later kind (the other registered tags work the same way;
# shipping all of them would only repeat these cases at the cost of a full-size export each).
TAGS = sorted([NONE, BSPLINE, RSWAF, MATCH, CONV_NONE, CONV_BSPLINE, f"{CONV_BSPLINE}_seed1", f"{ARCH}.cifar10_chebykan"])
CIFAR10 = list(P.CIFAR10_CLASSES)
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]


def _ship(root, tag, seed):
    opts, arch = P.TAGS[tag], tag.split(".", 1)[0]
    torch.manual_seed(seed)
    model = timm.create_model(arch, **opts)
    weights = {k: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v
               for k, v in model.state_dict().items()}
    meta = dict(model=arch, kan=opts["kan"], kan_hidden=None, kan_kwargs=None, num_classes=10,
                model_kwargs={k: v for k, v in opts.items() if k == "match_params"}, dataset="cifar10 (jpeg)",
                class_names=CIFAR10, mean=MEAN, std=STD, img_size=32, metrics={"test/acc1": 0.5})
    torch.save({"state_dict": {"model." + k: v for k, v in weights.items()}, "kanvision": meta},
               root / f"{tag}.ckpt")
    config = C.export(root / f"{tag}.ckpt", root / "checkpoints" / tag)
    (root / f"{tag}.ckpt").unlink()
    return weights, dict(tag=tag, file=f"{tag}/model.safetensors", sha256=config["kanvision"]["sha256"],
                         dataset="synthetic", val_top1=0.5, test_top1=0.5, test_top5=0.9, epochs=1, command="test")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """(checkpoints dir, {tag: the exact tensors shipped})."""
    root = tmp_path_factory.mktemp("ship")
    weights, entries = {}, []
    for seed, tag in enumerate(TAGS):
        weights[tag], entry = _ship(root, tag, seed)
        entries.append(entry)
    (root / "checkpoints" / "manifest.json").write_text(json.dumps({"entries": entries}))
    return root / "checkpoints", weights


@pytest.fixture(autouse=True)
def env(shipped, monkeypatch):
    monkeypatch.setenv(P.ENV, str(shipped[0]))


def _copy(shipped, tmp_path, edit=None):
    """A copy of the shipped directory, the manifest edited by edit(entries by tag), pointed at by the env var."""
    out = tmp_path / "copy"
    shutil.copytree(shipped[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    if edit:
        by_tag = {e["tag"]: e for e in manifest["entries"]}
        edit(by_tag)
        manifest["entries"] = list(by_tag.values())
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_list_pretrained_lists_the_tags_and_the_bare_name_keeps_no_weights():
    assert timm.list_pretrained("kan_*") == sorted(P.TAGS) and set(TAGS) <= set(P.TAGS)
    assert ARCH in timm.list_models("kan_*") and not any("." in m for m in timm.list_models("kan_*"))
    bare = timm.models.get_pretrained_cfg(ARCH)
    assert bare.file is None and bare.label_names is None and bare.tag is None
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        timm.create_model(ARCH, pretrained=True)
    cfg = timm.models.get_pretrained_cfg(BSPLINE)
    assert cfg.label_names == tuple(CIFAR10) and cfg.num_classes == 10 and cfg.input_size == (3, 32, 32)
    assert list(cfg.mean) == MEAN and list(cfg.std) == STD and cfg.license == "apache-2.0"
    assert "JPEG copy of CIFAR-10" in cfg.description and cfg.file == f"{BSPLINE}/model.safetensors"


@pytest.mark.parametrize("tag", TAGS)
def test_create_model_from_tag_builds_its_kind_and_loads_its_weights(shipped, tag):
    directory, weights = shipped
    model = timm.create_model(tag, pretrained=True)
    sd = model.state_dict()
    assert sd.keys() == weights[tag].keys() and all(torch.equal(sd[k], weights[tag][k]) for k in sd)
    want = P.TAGS[tag]["kan"]
    assert C.kan_kind_of(sd) == want
    if tag.startswith("kan_convmixer_128_8_p4."):  # dim 128, patch 4: a 1x1 conv or a 128 -> 128 KAN per block
        assert sd["stem.0.weight"].shape == (128, 3, 4, 4) and len(model.blocks) == 8
        assert sum(v.numel() for v in model.parameters()) == {CONV_NONE: 170_634, CONV_BSPLINE: 1_349_258}[
            tag.removesuffix("_seed1")]
    hidden = model.blocks[0].mlp_channels.fc1.out_features if tag in (NONE, MATCH) else None
    if tag == NONE:
        assert hidden == 512  # timm's mlp_ratio 4
    if tag == MATCH:  # widened to the B-spline model's size
        assert hidden != 512 and abs(sum(v.numel() for v in sd.values()) - 2_699_914) < 0.01 * 2_699_914
    assert model.pretrained_cfg["file"] == str(directory / tag / "model.safetensors")
    assert list(model.pretrained_cfg["label_names"]) == CIFAR10
    fresh = timm.create_model(tag)  # pretrained=False: the tag's architecture, not its weights
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    stem = "stem.0.weight" if tag.startswith("kan_convmixer") else "stem.proj.weight"
    assert not torch.equal(fresh.state_dict()[stem], sd[stem])


def test_options_contradicting_the_tag_are_refused(shipped):
    with pytest.raises(ValueError, match=r"^kan_mixer_tiny_p4_32\.cifar10_bspline holds weights of kan='bspline': "
                                         r"kan='rswaf' contradicts the tag; drop it"):
        timm.create_model(BSPLINE, kan="rswaf")
    with pytest.raises(ValueError, match="match_params='rswaf' contradicts"):
        timm.create_model(MATCH, pretrained=True, match_params="rswaf")
    with pytest.raises(ValueError, match="kan='bspline' contradicts"):
        timm.create_model(NONE, pretrained=True, kan="bspline")
    with pytest.raises(ValueError, match="kan='none', match_params='bspline' contradict the tag; drop them"):
        timm.create_model(RSWAF, kan="none", match_params="bspline")
    model = timm.create_model(RSWAF, pretrained=True, kan="RSWAF")  # the same kind, spelled otherwise
    assert torch.equal(model.head.weight, shipped[1][RSWAF]["head.weight"])


def test_changed_file_is_refused_with_both_hashes(shipped, tmp_path, monkeypatch):
    out = _copy(shipped, tmp_path)
    weights = out / BSPLINE / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    monkeypatch.setenv(P.ENV, str(out))
    expected = next(e["sha256"] for e in json.loads((out / "manifest.json").read_text())["entries"]
                    if e["tag"] == BSPLINE)
    with pytest.raises(P.PretrainedError) as e:
        timm.create_model(BSPLINE, pretrained=True)
    msg = str(e.value)
    assert msg.startswith(f"{weights}: sha256 {C.sha256_file(weights)} does not match manifest.json's {expected} "
                          f"for {BSPLINE}") and "git lfs pull" in msg and "\n" not in msg
    assert timm.create_model(RSWAF, pretrained=True) is not None  # the other files still load


@pytest.mark.parametrize("case", ["no dir", "no manifest", "no entry", "no file"])
def test_absent_weights_are_one_line_naming_the_env_var(shipped, tmp_path, monkeypatch, case):
    if case == "no dir":
        where = tmp_path / "nowhere"
    else:
        where = _copy(shipped, tmp_path, edit=(lambda by: by.pop(RSWAF)) if case == "no entry" else None)
        if case == "no manifest":
            (where / "manifest.json").unlink()
        if case == "no file":
            (where / RSWAF / "model.safetensors").unlink()
    monkeypatch.setenv(P.ENV, str(where))
    with pytest.raises(P.PretrainedError) as e:
        timm.create_model(RSWAF, pretrained=True)
    msg = str(e.value)
    assert isinstance(e.value, C.CheckpointError) and "\n" not in msg
    assert str(where) in msg and f"set {P.ENV} to the directory that holds them" in msg, msg
    assert {"no dir": "no checkpoints directory", "no manifest": "has no manifest.json",
            "no entry": f"{RSWAF}: no entry in", "no file": "is missing, though manifest.json lists it"}[case] in msg
    monkeypatch.delenv(P.ENV)  # unset: the checkout's checkpoints/ beside the package
    assert P.checkpoints_dir() == Path(P.__file__).resolve().parents[2] / "checkpoints"  # the checkout's


def test_export_shipped_under_another_tag_is_refused(shipped, tmp_path, monkeypatch):
    def swap(by):
        by[BSPLINE] = dict(by[RSWAF], tag=BSPLINE)
    monkeypatch.setenv(P.ENV, str(_copy(shipped, tmp_path, edit=swap)))
    with pytest.raises(P.PretrainedError, match=r"holds kan_mixer_tiny_p4_32 kan='rswaf' weights, not what "
                                                r"kan_mixer_tiny_p4_32\.cifar10_bspline stands for"):
        timm.create_model(BSPLINE, pretrained=True)


def _image(path):
    from PIL import Image
    Image.fromarray((torch.rand(40, 30, 3, generator=torch.Generator().manual_seed(3)) * 255).byte().numpy()).save(path)
    return str(path)


def test_predict_takes_a_tag_and_a_path_of_that_name_wins(shipped, tmp_path, monkeypatch, capsys):
    directory, _ = shipped
    img = _image(tmp_path / "img.png")

    def probs(checkpoint):
        assert predict_main([checkpoint, img, "--json", "--topk", "10", "--device", "cpu"]) == 0
        out = json.loads(capsys.readouterr().out)
        return {t["class"]: t["prob"] for t in out["results"][0]["top"]}

    from kanvision.hub.predict import predict_images
    expected = predict_images(C.load_pretrained(directory / NONE), [img], topk=10)[0][0]["top"]
    got = probs(NONE)
    assert got == {t["class"]: t["prob"] for t in expected} and set(got) == set(CIFAR10)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(directory / MATCH, tmp_path / NONE)  # a directory spelled like the tag
    assert probs(NONE) == probs(str(directory / MATCH)) != got
    monkeypatch.chdir(directory.parent)
    monkeypatch.setenv(P.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit):
        predict_main([NONE, img])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kanvision predict: error: {NONE}: no checkpoints directory")


SYNTH = ["--data.dataset=synthetic", "--data.synthetic_size=64", "--data.batch_size=32", "--data.num_workers=0",
         "--data.augment=none", "--trainer.accelerator=cpu", "--trainer.devices=1",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture
def cifar_names(monkeypatch):
    """Synthetic images under CIFAR-10's class names, so that the shipped weights' classes match the data's."""
    from kanvision.data.datamodule import ImageDataModule
    monkeypatch.setattr(ImageDataModule, "class_names", property(lambda self: CIFAR10))


@pytest.mark.parametrize("sub", ["test", "validate"])
def test_validate_and_test_start_from_a_tag(shipped, tmp_path, cifar_names, sub):
    directory, weights = shipped
    cli = lightning_main([sub, f"--trainer.default_root_dir={tmp_path}", "--pretrained", NONE, *SYNTH])
    sd = cli.model.model.state_dict()
    assert all(torch.equal(sd[k], weights[NONE][k]) for k in weights[NONE]) and sd.keys() == weights[NONE].keys()
    assert cli.model.hparams.model == ARCH and cli.model.hparams.kan == "none"
    assert list(cli.datamodule.hparams.mean) == MEAN and list(cli.datamodule.hparams.std) == STD
    model = C.load_pretrained(directory / NONE)
    loader = cli.datamodule.test_dataloader() if sub == "test" else cli.datamodule.val_dataloader()[0]  # [1]: train_eval
    x, y = next(iter(loader))
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y)
    stage = "test" if sub == "test" else "val"
    assert float(cli.trainer.callback_metrics[f"{stage}/loss"]) == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["test", "--pretrained", BSPLINE, "--model.kan=rswaf"],
     r"--model\.kan 'rswaf' but the checkpoint has kan='bspline' \(kan_mixer_tiny_p4_32\.cifar10_bspline \(.*\)\)\. "
     r"With --pretrained the model is the checkpoint's: drop those --model options"),
    (["test", "--pretrained", BSPLINE, "--data.synthetic_classes=3"],
     r"kan_mixer_tiny_p4_32\.cifar10_bspline \(.*\) was trained on 10 classes \(airplane, .*\) but the data has 3 "
     r"\(class_0, class_1, class_2\): give the data it was trained on .* instead of --pretrained"),
    (["validate", "--pretrained", NONE],  # same count, other names
     r"was trained on other classes than the data has \(index: checkpoint vs data: 0: airplane vs class_0"),
    (["fit", "--pretrained", NONE], r"--pretrained is for `kanvision validate` / `kanvision test`, not fit"),
    (["test", "--pretrained", "kan_mixer_tiny_p4_32.cifar10_nothing"],
     r"kan_mixer_tiny_p4_32\.cifar10_nothing: no entry in .*manifest\.json"),
])
def test_pretrained_flag_errors_are_one_line(tmp_path, args, message):
    with pytest.raises(SystemExit) as e:
        lightning_main([*args, f"--trainer.default_root_dir={tmp_path}", *SYNTH])
    msg = str(e.value.code)
    assert msg.startswith("kanvision: error: ") and re.search(message, msg) and "\n" not in msg, msg
    assert not list(tmp_path.rglob("version_*"))
