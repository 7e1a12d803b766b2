"""`kanvision fit|validate|test` through the real LightningCLI, on synthetic data and a one-block Mixer."""
import math
import csv
import re
from pathlib import Path

import lightning as L  # noqa: F401  (imported at collection: its log handlers must not bind a test's capture)
import pytest
import torch
import yaml

from kanvision import load_pretrained
from kanvision.cli import main

# write_config (tests/conftest.py): the one-block B-spline Mixer on synthetic images, FIT_CONFIG there.


class StopAfterFirstEpoch(L.Callback):
    """Ends fit after epoch 1 as a job killed at that point would, without changing the run's schedule."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def run_dir(root: Path, name: str) -> Path:
    return root / name / "version_0"


def test_fit_writes_a_complete_run(tmp_path, capsys, write_config):
    main(["fit", "--config", write_config(tmp_path), f"--trainer.default_root_dir={tmp_path}", "--name=t",
          "--trainer.log_every_n_steps=1"])
    out = capsys.readouterr().out
    assert re.search(r"val: top-1 \d\.\d{4}  top-5 \d\.\d{4}", out)
    assert "in KAN layers" in out
    run = run_dir(tmp_path, "t")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["kan"] == "bspline" and saved["data"]["dataset"] == "synthetic"
    assert (run / "metrics.csv").read_text().startswith("epoch") and any((run / "tensorboard").iterdir())
    # Lightning's LearningRateMonitor: each parameter group's learning rate at every logged step, the config's lr
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr-AdamW/pg1")]
    assert len(rows) >= 3 and all(r["lr-AdamW/pg1"] == r["lr-AdamW/pg2"] for r in rows)  # one schedule, 2 groups
    assert float(rows[0]["lr-AdamW/pg1"]) == saved["model"]["optimizer"]["init_args"]["lr"]  # step 0: the base lr
    assert not list(run.rglob(".*.tmp-*"))  # config.yaml, hparams.yaml, metrics.csv: renamed into place
    hparams = (run / "hparams.yaml").read_text()
    assert "params/kan" in hparams and "params/total" in hparams
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["kanvision"]["dataset"] == "synthetic" and "val/acc1" in ckpt["kanvision"]["metrics"]
    assert ckpt["kanvision"]["num_classes"] == 10  # linked from the data
    model = load_pretrained(last).eval()
    weights = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())

    main(["test", "--config", write_config(tmp_path), f"--trainer.default_root_dir={tmp_path}", "--name=t2",
          f"--ckpt_path={last}"])
    assert re.search(r"test: top-1 \d\.\d{4}", capsys.readouterr().out)


def test_print_config(tmp_path, capsys, write_config):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", write_config(tmp_path), "--model.kan=rswaf", "--print_config"])
    assert e.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["kan"] == "rswaf" and printed["data"]["dataset"] == "synthetic"


def test_user_errors_are_one_line(tmp_path, write_config):
    with pytest.raises(SystemExit, match=r"kanvision: error: CIFAR-10 not found: looked for .*nothing_here"):
        main(["fit", "--config", write_config(tmp_path), "--data.dataset=cifar10",
              f"--data.root={tmp_path / 'nothing_here'}", "--data.download=false"])
    with pytest.raises(SystemExit, match="kanvision: error: .*unknown kan kind 'kanish'"):
        main(["fit", "--config", write_config(tmp_path), "--model.kan=kanish"])


CONFIGS = Path(__file__).parent.parent / "configs"
EXPERIMENTS = sorted((CONFIGS / "experiment").glob("*.yaml"))


def test_every_shipped_config_parses(capsys):
    """Every experiment file (and the quick start) composes with the CPU trainer and names a real model."""
    import timm

    from kanvision.kinds import available_kinds
    # One recipe per model (3 paper DeiT sizes on CIFAR-100 at 224 + 8 CIFAR-10 zoo models); the kind is --model.kan.
    assert len(EXPERIMENTS) == 11
    for path in [CONFIGS / "quickstart.yaml", *EXPERIMENTS]:
        with pytest.raises(SystemExit) as e:
            main(["fit", "--config", str(CONFIGS / "trainer" / "cpu.yaml"), "--config", str(path), "--print_config"])
        assert e.value.code in (0, None), path
        cfg = yaml.safe_load(capsys.readouterr().out)
        # The recipes leave the kind to --model.kan (default none); the quick start picks one.
        assert timm.is_model(cfg["model"]["model"]), path
        assert cfg["model"]["kan"] == "none" or (path.name == "quickstart.yaml" and cfg["model"]["kan"] in available_kinds())
        assert cfg["name"] == path.stem or path.name == "quickstart.yaml"


@pytest.mark.parametrize("experiment, kind", [("cifar10_kan_mixer_tiny_p4_32", "bspline"),
                                              ("cifar100_kan_deit_tiny_patch16_224", "rswaf")])
def test_experiment_config_takes_a_step(tmp_path, capsys, experiment, kind):
    """The recipe as shipped (optimizer, schedule, mixup, augmentation, image size) runs a training step with the
    kind given on the command line; only the data source is swapped for synthetic images."""
    main(["fit", "--config", str(CONFIGS / "trainer" / "cpu.yaml"), "--config", str(CONFIGS / "experiment" / f"{experiment}.yaml"),
          f"--model.kan={kind}",
          "--data.dataset=synthetic", "--data.batch_size=4", "--data.synthetic_size=8", "--data.num_workers=0",
          "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])
    assert re.search(r"val: top-1 \d\.\d{4}", capsys.readouterr().out)


def test_shell_gets_an_exit_status_not_the_tools_result(monkeypatch):
    """`kanvision analyze` returns its rows to Python callers; the console script's sys.exit(rows) would
    print them and exit 1 after a successful run."""
    import sys
    import types

    import kanvision.cli as cli
    tool = types.ModuleType("fake_tool")
    tool.rows, tool.failed = (lambda argv: [{"model": "x"}]), (lambda argv: 3)
    monkeypatch.setitem(sys.modules, "fake_tool", tool)
    monkeypatch.setitem(cli.TOOLS, "rows", ("fake_tool", "rows", ""))
    monkeypatch.setitem(cli.TOOLS, "failed", ("fake_tool", "failed", ""))
    assert main(["rows"]) == [{"model": "x"}]
    monkeypatch.setattr(sys, "argv", ["kanvision", "rows"])
    assert main() == 0
    monkeypatch.setattr(sys, "argv", ["kanvision", "failed"])
    assert main() == 3


def test_diverging_run_stops_and_is_marked(tmp_path, write_config):
    """lr 1e4: the loss turns NaN; training stops there with one line, non-zero exit and status.json.
    (No validation before it: a validation of those weights would stop the run first, as validation diverged,
    tests/test_faults.py.)"""
    import json
    cfg = write_config(tmp_path, trainer__max_epochs=4)
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", cfg, f"--trainer.default_root_dir={tmp_path}", "--name=div",
              "--model.optimizer=torch.optim.SGD", "--model.optimizer.init_args.lr=1e4", "--model.lr_scheduler=null",
              "--trainer.gradient_clip_val=1", "--trainer.check_val_every_n_epoch=4"])
    msg = str(e.value.code)
    # Clipping is on, so the advice is the learning rate alone.
    assert re.fullmatch(r"kanvision: error: training diverged: loss (nan|inf|-inf) at step \d+ \(epoch \d\), last finite "
                        r"loss \S+, lr 1e\+04; the run is marked diverged in .*status\.json\. Lower the learning rate "
                        r"\(--model\.optimizer\.init_args\.lr\)", msg), msg
    status = json.loads((run_dir(tmp_path, "div") / "status.json").read_text())
    assert status["status"] == "diverged" and status["lr"] == 1e4 and status["loss"] in ("nan", "inf", "-inf")
    assert f"at step {status['step']} " in msg
    assert status["last_finite_loss"] is None or math.isfinite(status["last_finite_loss"])


class FailAtSecondStep(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 1:
            raise RuntimeError("disk full\nsecond line")


def test_run_status_finished_failed_and_none_for_fast_dev_run(tmp_path, write_config):
    import json
    cfg = write_config(tmp_path)
    quick = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    main(["fit", "--config", cfg, f"--trainer.default_root_dir={tmp_path}", "--name=ok", *quick])
    ok = json.loads((run_dir(tmp_path, "ok") / "status.json").read_text())
    assert ok["status"] == "finished" and set(ok) == {"status", "test"}  # fit ends by scoring the test split
    assert Path(ok["test"]["checkpoint"]).name.startswith("epoch000-top1_") and 0 <= ok["test"]["acc1"] <= 1
    with pytest.raises(RuntimeError, match="disk full"):
        main(["fit", "--config", cfg, f"--trainer.default_root_dir={tmp_path}", "--name=bad", *quick,
              "--trainer.callbacks+=test_cli.FailAtSecondStep"])
    assert json.loads((run_dir(tmp_path, "bad") / "status.json").read_text()) == {
        "status": "failed", "step": 1, "epoch": 0, "error": "RuntimeError: disk full"}
    main(["fit", "--config", cfg, f"--trainer.default_root_dir={tmp_path / 'dev'}", "--trainer.fast_dev_run=1"])
    assert not list((tmp_path / "dev").rglob("status.json"))  # no run directory to mark


def test_runs_of_the_same_name_get_their_own_directory(tmp_path):
    """Two runs started together both saw no version_0 yet and logged into it; the directory is now taken
    with mkdir, first come first served, and both loggers of a run use that exact directory."""
    import threading

    from kanvision.train.cli import default_loggers
    from kanvision.train.runs import allocate_version

    first, second = default_loggers(str(tmp_path), "same"), default_loggers(str(tmp_path), "same")
    assert [lg.version for lg in first] == [0, 0] and [lg.version for lg in second] == [1, 1]
    assert (tmp_path / "same" / "version_0").is_dir() and (tmp_path / "same" / "version_1").is_dir()
    assert second[1].log_dir == str(tmp_path / "same" / "version_1" / "tensorboard")

    start, got = threading.Barrier(8), []

    def run():
        start.wait()
        got.append(allocate_version(tmp_path, "race"))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(8))


@pytest.fixture(scope="module")
def bspline_ckpt(tmp_path_factory, write_config):
    """A B-spline Mixer checkpoint trained one step on 10 synthetic classes, and its config."""
    tmp_path = tmp_path_factory.mktemp("ckpt")
    cfg = write_config(tmp_path)
    main(["fit", "--config", cfg, f"--trainer.default_root_dir={tmp_path}", "--name=b",
          "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    return run_dir(tmp_path, "b") / "checkpoints" / "last.ckpt", cfg


def test_model_flags_contradicting_the_checkpoint_are_refused(tmp_path, bspline_ckpt):
    """--ckpt_path loads the checkpoint's hyper-parameters over the model's: a contradicting flag ran the
    checkpoint's model (bspline) with exit 0 instead of the asked rswaf."""
    last, cfg = bspline_ckpt
    with pytest.raises(SystemExit) as e:
        main(["test", "--config", cfg, f"--trainer.default_root_dir={tmp_path}", "--model.kan=rswaf",
              "--model.grid_update_every=7", f"--ckpt_path={last}"])
    msg = str(e.value.code)
    assert msg.startswith("kanvision: error: --model.kan 'rswaf' but the checkpoint has kan='bspline'; "
                          "--model.grid_update_every 7 but the checkpoint has grid_update_every=0 ("), msg
    assert "drop those --model options" in msg and "\n" not in msg


def test_checkpoint_with_other_classes_than_the_data_is_one_line(tmp_path, bspline_ckpt):
    """Was a traceback: size mismatch for model.head (count), or a silent remap (same count, other names)."""
    last, cfg = bspline_ckpt
    with pytest.raises(SystemExit) as e:
        main(["test", "--config", cfg, f"--trainer.default_root_dir={tmp_path}", "--data.synthetic_classes=3",
              f"--ckpt_path={last}"])
    assert re.fullmatch(r"kanvision: error: \S+last\.ckpt was trained on 10 classes \(class_0, class_1, class_2, "
                        r"class_3, \.\.\. \(10 in all\)\) but the data has 3 \(class_0, class_1, class_2\): give the "
                        r"data it was trained on .*", str(e.value.code)), e.value.code
    from kanvision.data.datamodule import ImageDataModule
    from kanvision.train.checks import check_ckpt_classes
    from kanvision.train.module import ConfigError
    renamed = ImageDataModule("synthetic")  # 10 classes, as trained, under other names
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImageDataModule, "class_names", property(lambda self: [f"c{i}" for i in range(10)]))
        with pytest.raises(ConfigError, match=r"trained on other classes than the data has \(index: checkpoint vs "
                                              r"data: 0: class_0 vs c0, 1: class_1 vs c1"):
            check_ckpt_classes(last, renamed)


def test_image_size_of_a_fixed_input_model_is_one_line(tmp_path, write_config):
    """Was an AssertionError traceback from the patch embedding in the sanity check."""
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", write_config(tmp_path), f"--trainer.default_root_dir={tmp_path}",
              "--data.img_size=64"])
    assert str(e.value.code) == ("kanvision: error: --data.img_size 64 but kan_mixer_tiny_p4_32 takes 32x32 images "
                                 "only (fixed input size): set --data.img_size 32, or build it for 64x64 with "
                                 "--model.model_kwargs.img_size 64")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]  # no empty run directory left behind


def test_shell_command_does_not_warn_about_args_and_argv(monkeypatch, capsys, recwarn):
    """`kanvision fit --help` printed LightningCLI's 'args and sys.argv' warning with the argv twice."""
    import sys
    monkeypatch.setattr(sys, "argv", ["kanvision", "fit", "--help"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None) and "--model.kan" in capsys.readouterr().out
    assert not [w for w in recwarn if "args parameter" in str(w.message)], [str(w.message) for w in recwarn]


def test_kan_options_have_help(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--model.kan KAN what replaces the zoo model's channel MLPs: none (timm's MLP) or a KAN kind (`kanvision kinds`" in out
    assert "--model.kan_hidden KAN_HIDDEN hidden width of each KAN MLP, a whole number" in out
    assert "--model.kan_kwargs KAN_KWARGS KAN layer keywords, e.g. {grid_size: 5, spline_order: 3}" in out


class TrainEvalProbe(L.Callback):
    """Keeps the last validation's batches of the second loader (the un-augmented training images)."""

    def on_validation_epoch_start(self, trainer, pl_module):
        self.images, self.labels = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx == 1:
            self.images.append(batch[0].clone())
            self.labels.append(batch[1].clone())


def test_train_eval_accuracy_is_measured_on_unaugmented_training_images(tmp_path, capsys, write_config):
    """train_eval/acc1 (logged at every validation) is the model's accuracy on the data module's fixed subset of
    the images it trains on, with the evaluation transform though training augments; val/acc1 keeps its name and
    its values (the checkpoint monitor), and `kanvision validate` prints the gap."""
    import csv

    from kanvision.train.cli import lightning_main
    from kanvision.data.synthetic import SyntheticImages

    cfg = write_config(tmp_path, data__augment="cifar", data__val_split=16, trainer__max_epochs=2,
                       data__train_eval_size=24)
    common = ["--config", cfg, f"--trainer.default_root_dir={tmp_path}", "--test_after_fit=false"]
    cli = lightning_main(["fit", *common, "--name=te", "--trainer.callbacks+=test_cli.TrainEvalProbe"])
    dm, probe = cli.datamodule, next(c for c in cli.trainer.callbacks if isinstance(c, TrainEvalProbe))
    picked = dm.train_eval_set.indices
    assert len(picked) == 24 and set(picked) <= set(dm.train_set.indices) and not set(picked) & set(dm.val_set.indices)
    raw = SyntheticImages(64, 10, 32, seed=0, split_seed=0)  # the training split, built here without any transform
    x = torch.stack([(raw[i][0] - 0.5) / 0.25 for i in picked])
    y = torch.tensor([raw[i][1] for i in picked])
    assert torch.allclose(torch.cat(probe.images), x, atol=1e-6) and torch.equal(torch.cat(probe.labels), y)
    model = cli.model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(-1) == y).float().mean().item()
    logged = cli.trainer.callback_metrics
    assert float(logged["train_eval/acc1"]) == pytest.approx(correct, abs=1e-6)
    # Two validations (one per epoch), each row with both loaders' metrics, no "/dataloader_idx_N" names.
    with open(run_dir(tmp_path, "te") / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert not [k for k in rows[0] if "dataloader_idx" in k]
    with_train_eval = [(r["epoch"], r["val/acc1"], r["val/loss"]) for r in rows if r.get("val/acc1")]
    assert len(with_train_eval) == 2 and all(r.get("train_eval/acc1") for r in rows if r.get("val/acc1"))
    # The same run without the second loader: the same validation numbers, the same weights.
    cli_off = lightning_main(["fit", *common, "--name=off", "--data.train_eval_size=0"])
    with open(run_dir(tmp_path, "off") / "metrics.csv") as f:
        rows_off = list(csv.DictReader(f))
    assert "train_eval/acc1" not in rows_off[0]
    assert [(r["epoch"], r["val/acc1"], r["val/loss"]) for r in rows_off if r.get("val/acc1")] == with_train_eval
    off_weights = cli_off.model.state_dict()
    assert all(torch.equal(v, off_weights[k]) for k, v in cli.model.state_dict().items())
    capsys.readouterr()
    lightning_main(["validate", *common, "--name=v", f"--ckpt_path={run_dir(tmp_path, 'te') / 'checkpoints' / 'last.ckpt'}"])
    out = capsys.readouterr().out
    val = float(re.search(r"val: top-1 (\d\.\d{4})", out).group(1))
    train, gap = re.search(r"train_eval: top-1 (\d\.\d{4}) .*gap to val top-1 ([+-]\d\.\d{4})", out).groups()
    assert float(train) == pytest.approx(correct, abs=1e-4) and float(gap) == pytest.approx(float(train) - val, abs=2e-4)
