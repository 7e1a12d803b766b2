"""Export (.ckpt / run dir -> safetensors + config.json), the three loading paths, and the error cases.

Checkpoints are built here in the format kanvision's training writes (Lightning `state_dict` with
`model.` keys + `checkpoint["kanvision"]`), from a tiny timm model with synthetic weights.
"""
import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from kanvision.hub import checkpoints as C
from kanvision.hub.checkpoints import CheckpointError
from kanvision.layers import KanMlp

ARCH = "resnet10t"  # small, in every timm; the KAN zoo's own models are covered in the integration test
CLASSES = ["cat", "dog", "frog"]


def make_ckpt(path, seed=0, callbacks=None, arch=ARCH, **meta_over):
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=len(CLASSES)).eval()
    meta = dict(model=arch, kan=None, kan_hidden=None, kan_kwargs=None, num_classes=len(CLASSES), model_kwargs={},
                dataset="synthetic", class_names=CLASSES, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], img_size=32,
                metrics={"test/acc1": 0.5})
    meta.update(meta_over)
    ckpt = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "kanvision": meta,
            "hyper_parameters": {"model": arch}, "callbacks": callbacks or {}}
    ckpt["state_dict"]["train_acc.tp"] = torch.zeros(3)  # a non-network entry of the LightningModule
    torch.save(ckpt, path)
    return model


@pytest.fixture
def exported(tmp_path):
    model = make_ckpt(tmp_path / "run.ckpt")
    C.export(tmp_path / "run.ckpt", tmp_path / "exp")
    return model, tmp_path / "exp"


def same_outputs(a, b):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_strip_prefixes():
    sd = {"model.module._orig_mod.fc.weight": 1, "model.fc.bias": 2, "val_acc.total": 3}
    assert C.strip_prefixes(sd) == {"fc.weight": 1, "fc.bias": 2}
    assert C.strip_prefixes({"module.fc.weight": 1}) == {"fc.weight": 1}


def test_export_writes_plain_keys_and_full_config(exported):
    from safetensors.torch import load_file
    model, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no tmp leftovers
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors.keys() == model.state_dict().keys()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == ARCH and cfg["num_classes"] == 3 and cfg["model_args"] == {"num_classes": 3}
    pc = cfg["pretrained_cfg"]
    assert pc["mean"] == [0.4, 0.5, 0.6] and pc["std"] == [0.2, 0.25, 0.3] and pc["input_size"] == [3, 32, 32]
    assert pc["label_names"] == CLASSES and pc["num_classes"] == 3
    kv = cfg["kanvision"]
    assert kv["sha256"] == C.sha256_file(out / "model.safetensors")
    assert kv["dataset"] == "synthetic" and kv["metrics"] == {"test/acc1": 0.5} and "run.ckpt" in kv["source"]
    assert kv["versions"]["timm"] == timm.__version__ and kv["versions"]["torch"] == torch.__version__


@pytest.mark.parametrize("which", ["dir", "safetensors", "ckpt"])
def test_load_pretrained(exported, which):
    model, out = exported
    path = {"dir": out, "safetensors": out / "model.safetensors", "ckpt": out.parent / "run.ckpt"}[which]
    loaded = C.load_pretrained(path, device="cpu")
    assert not loaded.training and same_outputs(model, loaded)
    assert loaded.class_names == CLASSES and loaded.pretrained_cfg["label_names"] == CLASSES
    assert loaded.pretrained_cfg["mean"] == [0.4, 0.5, 0.6] and loaded.pretrained_cfg["num_classes"] == 3
    assert tuple(loaded.pretrained_cfg["input_size"]) == (3, 32, 32)


def test_timm_file_path(exported):
    model, out = exported
    explicit = timm.create_model(ARCH, pretrained=True, num_classes=3,
                                 pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=3))
    assert same_outputs(model, explicit)
    assert same_outputs(model, timm.create_model(**C.timm_kwargs(out)))


def test_timm_local_dir(exported):
    model, out = exported
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert same_outputs(model, loaded)
    assert loaded.num_classes == 3 and loaded.pretrained_cfg["label_names"] == CLASSES
    assert list(loaded.pretrained_cfg["mean"]) == [0.4, 0.5, 0.6]


def test_run_dir_picks_best_then_last(tmp_path):
    ckdir = tmp_path / "run" / "version_0" / "checkpoints"
    ckdir.mkdir(parents=True)
    best = make_ckpt(ckdir / "epoch=3-step=40.ckpt", seed=1)
    # best_model_path as recorded on another machine: resolved by name next to last.ckpt
    callbacks = {"ModelCheckpoint{'monitor': 'val/acc1'}": {"best_model_path": "/elsewhere/epoch=3-step=40.ckpt"}}
    make_ckpt(ckdir / "last.ckpt", seed=2, callbacks=callbacks)
    path, why = C.find_run_checkpoint(tmp_path / "run")
    assert path.name == "epoch=3-step=40.ckpt" and "best" in why
    C.export(tmp_path / "run", tmp_path / "exp")
    assert same_outputs(best, C.load_pretrained(tmp_path / "exp"))
    (ckdir / "epoch=3-step=40.ckpt").unlink()
    path, why = C.find_run_checkpoint(tmp_path / "run")
    assert path.name == "last.ckpt" and "last" in why
    with pytest.raises(CheckpointError, match="no .ckpt files"):
        C.find_run_checkpoint(tmp_path / "exp")


def test_refuses_to_overwrite_a_different_export(tmp_path):
    make_ckpt(tmp_path / "a.ckpt", seed=0)
    make_ckpt(tmp_path / "b.ckpt", seed=1)
    C.export(tmp_path / "a.ckpt", tmp_path / "exp")
    C.export(tmp_path / "a.ckpt", tmp_path / "exp")  # same weights again: fine
    before = (tmp_path / "exp" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="--force"):
        C.export(tmp_path / "b.ckpt", tmp_path / "exp")
    assert (tmp_path / "exp" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["config.json", "model.safetensors"]
    C.export(tmp_path / "b.ckpt", tmp_path / "exp", force=True)
    assert (tmp_path / "exp" / "model.safetensors").read_bytes() != before
    C.load_pretrained(tmp_path / "exp")  # config and hash consistent after the overwrite


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    from kanvision.train import atomic
    make_ckpt(tmp_path / "a.ckpt")
    write = atomic._Recording.write

    def dies(self, data):  # half of the weights reach the disk, then Ctrl-C
        write(self, bytes(data)[:len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic._Recording, "write", dies)
    with pytest.raises(KeyboardInterrupt):
        C.export(tmp_path / "a.ckpt", tmp_path / "exp")
    assert list((tmp_path / "exp").iterdir()) == []


def test_hash_mismatch_and_truncation(exported):
    _, out = exported
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped bit in a tensor: still parses, only the hash can tell
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 .* does not match config\.json"):
        C.load_pretrained(out)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="sha256"):
        C.load_pretrained(out)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        C.load_pretrained(out, verify_hash=False)


def test_truncated_or_foreign_ckpt(tmp_path):
    make_ckpt(tmp_path / "a.ckpt")
    data = (tmp_path / "a.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt: not a readable PyTorch checkpoint"):
        C.load_pretrained(tmp_path / "cut.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match=r"foreign\.ckpt: no 'kanvision' record"):
        C.export(tmp_path / "foreign.ckpt", tmp_path / "exp")
    # A class in the record is a Python object a weights-only load refuses (tests/test_safe_loading.py) ...
    make_ckpt(tmp_path / "obj.ckpt", model_kwargs={"act_layer": nn.GELU})
    with pytest.raises(CheckpointError, match=r"obj\.ckpt: refused: .*torch\.nn\.modules\.activation\.GELU"):
        C.export(tmp_path / "obj.ckpt", tmp_path / "exp")
    # ... plain data that JSON cannot hold (bytes) loads, and is refused by the export's config check.
    make_ckpt(tmp_path / "bytes.ckpt", model_kwargs={"tag": b"\x00"})
    with pytest.raises(CheckpointError, match=r"bytes\.ckpt: its 'kanvision' record does not fit in config.json"):
        C.export(tmp_path / "bytes.ckpt", tmp_path / "exp")
    assert not (tmp_path / "exp").exists()
    with pytest.raises(CheckpointError, match="no such file"):
        C.load_pretrained(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="model.safetensors: missing; an export directory holds"):
        C.load_pretrained(tmp_path)


def test_wrong_architecture_names_keys_and_shapes(exported):
    _, out = exported
    cfg = json.loads((out / "config.json").read_text())
    cfg["architecture"] = "resnet14t"  # deeper: weights lack its extra blocks
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"exp: weights do not fit the model: \d+ missing keys: layer"):
        C.load_pretrained(out)
    cfg["architecture"], cfg["model_args"] = ARCH, {"num_classes": 5}
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatches: fc.weight: file \(3, 512\) vs model \(5, 512\)"):
        C.load_pretrained(out)


def test_wrong_kan_kind_is_named():
    def net(kind):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 4), KanMlp(4, 6, kind=kind))

    with pytest.raises(CheckpointError) as e:
        C.check_state_dict(net("bspline"), net("rswaf").state_dict(), "x.safetensors")
    msg = str(e.value)
    assert msg.startswith("x.safetensors: ")
    assert "expected kan='bspline' weights (spline_weight keys)" in msg and "exported with kan='rswaf'" in msg
    assert "missing keys: 1.fc1.base_weight" in msg and "unexpected keys: 1.fc1.layernorm" in msg
    C.check_state_dict(net("rswaf"), net("rswaf").state_dict(), "x")  # matching weights pass


def test_cli_errors_are_one_line(tmp_path, capsys):
    from kanvision.cli import main
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.ckpt" in err and "Traceback" not in err
    make_ckpt(tmp_path / "a.ckpt")
    assert main(["export", str(tmp_path / "a.ckpt"), "--out", str(tmp_path / "o")]) == 0
    assert "sha256" in capsys.readouterr().out


ZOO = "kan_mixer_tiny_p4_32"


@pytest.mark.skipif(not timm.is_model(ZOO), reason=f"{ZOO} not registered (model zoo not merged)")
def test_zoo_model_round_trip_and_kan_kind_mismatch(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(ZOO, kan="bspline", num_classes=3).eval()
    meta = dict(model=ZOO, kan="bspline", kan_hidden=None, kan_kwargs=None, num_classes=3, model_kwargs={},
                dataset="synthetic", class_names=CLASSES, mean=[0.5] * 3, std=[0.25] * 3, img_size=32, metrics={})
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "kanvision": meta},
               tmp_path / "zoo.ckpt")
    out = tmp_path / "exp"
    C.export(tmp_path / "zoo.ckpt", out)
    assert json.loads((out / "config.json").read_text())["model_args"]["kan"] == "bspline"
    assert same_outputs(model, C.load_pretrained(out))
    assert same_outputs(model, timm.create_model(f"local-dir:{out}", pretrained=True))
    assert same_outputs(model, timm.create_model(ZOO, pretrained=True, kan="bspline", num_classes=3,
                                                 pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"),
                                                                             num_classes=3)))
    cfg = json.loads((out / "config.json").read_text())
    cfg["model_args"]["kan"] = "rswaf"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"expected kan='rswaf' weights \(spline_linear.weight keys\) but "
                                              r"file has kan='bspline' weights: was it exported with kan='bspline'"):
        C.load_pretrained(out)


def test_real_lightning_run_dir(tmp_path):
    """A run written by Lightning's Trainer + ModelCheckpoint: export takes the recorded best checkpoint."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Tiny(L.LightningModule):  # the shape of kanvision's ImageClassifier: network at self.model
        def __init__(self):
            super().__init__()
            self.model = timm.create_model("test_resnet", num_classes=3)

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self.model(batch[0]), batch[1])

        def validation_step(self, batch, _):
            # a loss that is lowest at epoch 0, so "best" differs from "last"
            self.log("val_loss", 2.0 * self.current_epoch - 1.0)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def on_save_checkpoint(self, checkpoint):
            checkpoint["kanvision"] = dict(model="test_resnet", num_classes=3, mean=[0.5] * 3, std=[0.5] * 3,
                                           img_size=32, class_names=CLASSES, dataset="synthetic", metrics={})

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "run" / "checkpoints", monitor="val_loss", save_last=True)
    trainer = L.Trainer(max_epochs=2, callbacks=[ckpt_cb], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(Tiny(), loader, loader)
    path, why = C.find_run_checkpoint(tmp_path / "run")
    assert path == Path(ckpt_cb.best_model_path) and path.name.startswith("epoch=0") and "best" in why
    C.export(tmp_path / "run", tmp_path / "exp")
    best = torch.load(path, weights_only=False)["state_dict"]
    loaded = C.load_pretrained(tmp_path / "exp")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in C.strip_prefixes(best).items())


def test_non_finite_weights_are_refused(tmp_path, capsys):
    """A diverged run's weights (NaN) would export and then predict nan% for every image."""
    make_ckpt(tmp_path / "run.ckpt")
    ckpt = torch.load(tmp_path / "run.ckpt", weights_only=False)
    ckpt["state_dict"]["model.fc.weight"][0, 0] = float("nan")
    ckpt["state_dict"]["model.fc.bias"][1] = float("inf")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match=r"nan\.ckpt: 2 weight tensor\(s\) hold NaN/inf values \(fc\.weight, "
                                              r"fc\.bias\): the training run diverged"):
        C.export(tmp_path / "nan.ckpt", tmp_path / "exp")
    assert not (tmp_path / "exp" / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match="hold NaN/inf values"):
        C.load_pretrained(tmp_path / "nan.ckpt")
    with pytest.raises(SystemExit) as e:
        C.export_main([str(tmp_path / "nan.ckpt"), "--out", str(tmp_path / "exp")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "hold NaN/inf values" in err and "\n" not in err
    # An export with NaN weights made before this check (its hash is valid) does not load either.
    from safetensors.torch import save_file
    C.export(tmp_path / "run.ckpt", tmp_path / "old")
    tensors = {k: v.clone() for k, v in timm.create_model(ARCH, num_classes=3).state_dict().items()}
    tensors["fc.weight"][0, 0] = float("nan")
    save_file(tensors, str(tmp_path / "old" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"old: 1 weight tensor\(s\) hold NaN/inf values"):
        C.load_pretrained(tmp_path / "old", verify_hash=False)


def test_export_files_are_readable_by_others(tmp_path):
    """safetensors wrote model.safetensors 0600: a shared export could not be read by anyone else."""
    import os
    import stat
    make_ckpt(tmp_path / "run.ckpt")
    old = os.umask(0o022)
    try:
        C.export(tmp_path / "run.ckpt", tmp_path / "exp")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / "exp" / name).stat().st_mode) == 0o644, name
